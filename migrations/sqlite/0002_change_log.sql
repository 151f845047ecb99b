-- The change log (see the Postgres migration of the same name): the position
-- of each record's and each delete's last change, the device of the last
-- applied change, and who made it. One process writes the file, so positions
-- come from its writer in commit order.
ALTER TABLE user_progress ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE user_progress ADD COLUMN device TEXT;
ALTER TABLE user_progress ADD COLUMN origin TEXT NOT NULL DEFAULT '';
ALTER TABLE user_progress ADD COLUMN private INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS progress_tombstones (
    user_id       TEXT    NOT NULL,
    manga_id      INTEGER NOT NULL,
    change_seq    INTEGER NOT NULL,
    origin        TEXT    NOT NULL DEFAULT '',
    deleted_at_us INTEGER NOT NULL,
    PRIMARY KEY (user_id, manga_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS progress_change_log (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    epoch          TEXT    NOT NULL,
    -- Positions of rows written before the log; later, the last position
    -- is the tables' maximum (every batch writes its last change).
    last_position  INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL DEFAULT 0
);

UPDATE user_progress SET change_seq = n.rn
  FROM (SELECT user_id AS u, manga_id AS m,
               row_number() OVER (ORDER BY updated_at_us, user_id, manga_id) AS rn
          FROM user_progress) AS n
 WHERE user_id = n.u AND manga_id = n.m;

INSERT OR IGNORE INTO progress_change_log (id, epoch, last_position)
VALUES (1, lower(hex(randomblob(8))), (SELECT COALESCE(max(change_seq), 0) FROM user_progress));

-- A record created again drops its delete marker, in the writing statement.
CREATE TRIGGER IF NOT EXISTS user_progress_created_drops_marker AFTER INSERT ON user_progress
BEGIN
    DELETE FROM progress_tombstones WHERE user_id = NEW.user_id AND manga_id = NEW.manga_id;
END;

-- One user's changes are read through the primary key (user_id, …); all
-- users' by position.
CREATE INDEX IF NOT EXISTS user_progress_by_position ON user_progress (change_seq);
CREATE INDEX IF NOT EXISTS progress_tombstones_by_position ON progress_tombstones (change_seq);
CREATE INDEX IF NOT EXISTS progress_tombstones_by_user_position ON progress_tombstones (user_id, change_seq);
