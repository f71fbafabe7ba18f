-- One row per job, keyed by the job id (a UUIDv7, so ids sort by submission time).
CREATE TABLE jobs (
    job_id           uuid        PRIMARY KEY,
    image_key        text        NOT NULL,
    -- ETag of the input object when the job was submitted.
    input_etag       text,
    status           text        NOT NULL CHECK (status IN ('queued', 'done', 'failed')),
    overlay_key      text,
    preview_key      text,
    -- Array of {x1, y1, x2, y2, label, score} in full-resolution pixels, x2 and y2 exclusive.
    boxes            jsonb       NOT NULL DEFAULT '[]',
    width            integer,
    height           integer,
    detector         text,
    detector_version text,
    error_code       text,
    error_message    text,
    -- How many times processing of the job reached the result stage.
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    processed_at     timestamptz
);

CREATE INDEX jobs_created_at_idx ON jobs (created_at DESC, job_id DESC);
