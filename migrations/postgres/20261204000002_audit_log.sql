-- Append-only record of who submitted or read which jobs through the API.
CREATE TABLE audit_log (
    audit_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at timestamptz NOT NULL,
    -- Name of the API token, or 'anonymous' when authentication is off.
    actor       text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('submit', 'read_job', 'list_recent')),
    -- Jobs the request created or returned; empty when it created or found none.
    job_ids     uuid[]      NOT NULL DEFAULT '{}',
    -- HTTP status of the response.
    status      integer     NOT NULL,
    -- Client address and port as the API saw them (a proxy's address behind a proxy).
    remote_addr text        NOT NULL
);

CREATE INDEX audit_log_recorded_at_idx ON audit_log (recorded_at);
CREATE INDEX audit_log_job_ids_idx ON audit_log USING gin (job_ids);

-- Rows can be inserted and read but never changed or removed, not even by the table owner,
-- until the owner drops these triggers (see docs/SECURITY.md on retention).
CREATE FUNCTION audit_log_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_reject_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change();
