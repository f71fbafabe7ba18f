-- Append-only record of who submitted or read which jobs through the API, with the columns
-- of the PostgreSQL table. Job ids are a JSON array of lowercase hyphenated UUIDs, and
-- recorded_at is RFC 3339 text in UTC with microseconds, like the jobs table.
CREATE TABLE audit_log (
    audit_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT    NOT NULL,
    -- Name of the API token, or 'anonymous' when authentication is off.
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL CHECK (action IN ('submit', 'read_job', 'list_recent')),
    -- Jobs the request created or returned; '[]' when it created or found none.
    job_ids     TEXT    NOT NULL DEFAULT '[]',
    -- HTTP status of the response.
    status      INTEGER NOT NULL,
    -- Client address and port as the API saw them (a proxy's address behind a proxy).
    remote_addr TEXT    NOT NULL
);

CREATE INDEX audit_log_recorded_at_idx ON audit_log (recorded_at);

-- Rows can be inserted and read but never changed or removed until these triggers are
-- dropped (see docs/SECURITY.md on retention).
CREATE TRIGGER audit_log_no_update
    BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER audit_log_no_delete
    BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE is not allowed');
END;
