-- The durable record (contract §3).
CREATE TABLE IF NOT EXISTS user_progress (
    user_id         TEXT          NOT NULL,
    manga_id        BIGINT        NOT NULL,
    current_chapter NUMERIC(10,2) NOT NULL CHECK (current_chapter BETWEEN 0 AND 100000),
    page            INT           NOT NULL DEFAULT 0 CHECK (page BETWEEN 0 AND 100000),
    status          TEXT          NOT NULL DEFAULT 'reading',
    version         BIGINT        NOT NULL,
    updated_at      TIMESTAMPTZ   NOT NULL,
    PRIMARY KEY (user_id, manga_id)
);

CREATE INDEX IF NOT EXISTS user_progress_by_update
    ON user_progress (user_id, updated_at, manga_id);
