-- Hybrid mode (Redis write-behind): every change carries a sequence number
-- assigned in Redis, so batches committed out of order by several replicas
-- still leave the newest change. Rows written by the Postgres-alone store keep 0.
ALTER TABLE user_progress ADD COLUMN IF NOT EXISTS change_seq BIGINT NOT NULL DEFAULT 0;

-- Durable deletes of the hybrid store: a queued update older than the delete
-- (a lower change_seq) must not bring the row back. Pruned after a retention.
CREATE TABLE IF NOT EXISTS progress_tombstones (
    user_id    TEXT        NOT NULL,
    manga_id   BIGINT      NOT NULL,
    change_seq BIGINT      NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, manga_id)
);

CREATE INDEX IF NOT EXISTS progress_tombstones_by_age ON progress_tombstones (deleted_at);
