-- When the queue acknowledged the job's message; NULL while that is not known. rfo-api
-- publishes queued rows with no publish time again, so a crash between the insert and the
-- publish, or a publish with an unknown outcome, does not leave a job queued forever.
ALTER TABLE jobs ADD COLUMN published_at timestamptz;

-- Rows written before this column existed were either acknowledged by the queue or marked
-- failed at submission.
UPDATE jobs SET published_at = created_at;

CREATE INDEX jobs_unpublished_idx ON jobs (created_at)
    WHERE status = 'queued' AND published_at IS NULL;
