-- Embedded store: chapter as integer hundredths, time as unix microseconds (UTC).
CREATE TABLE IF NOT EXISTS user_progress (
    user_id            TEXT    NOT NULL,
    manga_id           INTEGER NOT NULL,
    chapter_hundredths INTEGER NOT NULL CHECK (chapter_hundredths BETWEEN 0 AND 10000000),
    page               INTEGER NOT NULL DEFAULT 0 CHECK (page BETWEEN 0 AND 100000),
    status             TEXT    NOT NULL DEFAULT 'reading',
    version            INTEGER NOT NULL,
    updated_at_us      INTEGER NOT NULL,
    PRIMARY KEY (user_id, manga_id)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS user_progress_by_update
    ON user_progress (user_id, updated_at_us, manga_id);
