-- One row per job, keyed by the job id, with the columns of the PostgreSQL table. Ids are
-- lowercase hyphenated UUIDs and timestamps RFC 3339 text in UTC with microseconds
-- (2026-02-01T05:36:26.470485+00:00), so both sort correctly as text.
CREATE TABLE jobs (
    job_id           TEXT    PRIMARY KEY NOT NULL,
    image_key        TEXT    NOT NULL,
    -- ETag of the input object when the job was submitted.
    input_etag       TEXT,
    status           TEXT    NOT NULL CHECK (status IN ('queued', 'done', 'failed')),
    overlay_key      TEXT,
    preview_key      TEXT,
    -- JSON array of {x1, y1, x2, y2, label, score} in full-resolution pixels.
    boxes            TEXT    NOT NULL DEFAULT '[]',
    width            INTEGER,
    height           INTEGER,
    detector         TEXT,
    detector_version TEXT,
    error_code       TEXT,
    error_message    TEXT,
    -- How many times processing of the job reached the result stage.
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT    NOT NULL,
    processed_at     TEXT
);

CREATE INDEX jobs_created_at_idx ON jobs (created_at DESC, job_id DESC);
