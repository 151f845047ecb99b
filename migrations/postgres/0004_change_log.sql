-- The change log (every mode): each record and each delete marker carries the
-- position of its last change in `change_seq`, so "every change after P" is
-- one indexed read of both tables. Postgres alone assigns positions from the
-- counter below inside the writing transaction (holding its row lock until
-- commit, so positions become visible in order); the hybrid store keeps the
-- sequence Redis assigns. `epoch` makes a cursor from another database
-- recognisable; `pruned_through` is the newest position a pruned delete
-- marker had: a cursor below it may have missed a delete.
CREATE TABLE IF NOT EXISTS progress_change_log (
    id             INT    PRIMARY KEY CHECK (id = 1),
    epoch          TEXT   NOT NULL,
    last_position  BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL DEFAULT 0
);

-- The device of the last applied change, and who made it (replayed events
-- carry them: `private` keeps a replayed change off channel subscribers).
ALTER TABLE user_progress ADD COLUMN IF NOT EXISTS device TEXT;
ALTER TABLE user_progress ADD COLUMN IF NOT EXISTS origin TEXT NOT NULL DEFAULT '';
ALTER TABLE user_progress ADD COLUMN IF NOT EXISTS private BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE progress_tombstones ADD COLUMN IF NOT EXISTS origin TEXT NOT NULL DEFAULT '';

-- Rows written before positions existed get one each, oldest first.
WITH numbered AS (
    SELECT user_id, manga_id, row_number() OVER (ORDER BY updated_at, user_id, manga_id) AS n
      FROM user_progress WHERE change_seq = 0
)
UPDATE user_progress AS r SET change_seq = numbered.n
  FROM numbered WHERE r.user_id = numbered.user_id AND r.manga_id = numbered.manga_id;

INSERT INTO progress_change_log (id, epoch, last_position)
VALUES (1, substr(md5(random()::text || clock_timestamp()::text), 1, 16),
        GREATEST((SELECT COALESCE(max(change_seq), 0) FROM user_progress),
                 (SELECT COALESCE(max(change_seq), 0) FROM progress_tombstones)))
ON CONFLICT (id) DO NOTHING;

-- Postgres alone: every applied change, one row each, at its position (the
-- tables above keep only each record's last change). The tailers of every
-- replica read it by position and publish each change, so a watcher gets
-- every change once, in order, even when one record changed several times
-- between two reads (or within one batch). Deletes have no record columns.
-- Rows older than CHANGE_RETENTION are pruned (raising `pruned_through`).
-- The hybrid store does not write it (its live feed is the Redis stream).
CREATE TABLE IF NOT EXISTS progress_changes (
    position        BIGINT        PRIMARY KEY,
    user_id         TEXT          NOT NULL,
    manga_id        BIGINT        NOT NULL,
    deleted         BOOLEAN       NOT NULL,
    current_chapter NUMERIC(10,2),
    page            INT,
    status          TEXT,
    version         BIGINT,
    updated_at      TIMESTAMPTZ,
    device          TEXT,
    origin          TEXT          NOT NULL DEFAULT '',
    private         BOOLEAN       NOT NULL DEFAULT false,
    changed_at      TIMESTAMPTZ   NOT NULL DEFAULT now()
);
-- Rows are appended in time order: a BRIN index finds the old ones to prune
-- for almost no cost per insert.
CREATE INDEX IF NOT EXISTS progress_changes_by_time ON progress_changes USING brin (changed_at);

-- One user's changes are read through the primary key (user_id, …); all
-- users' (the tailers) by position.
CREATE INDEX IF NOT EXISTS user_progress_by_position ON user_progress (change_seq);
CREATE INDEX IF NOT EXISTS progress_tombstones_by_position ON progress_tombstones (change_seq);
CREATE INDEX IF NOT EXISTS progress_tombstones_by_user_position ON progress_tombstones (user_id, change_seq);

-- One batch of the Postgres-alone store: take `n_positions` positions under
-- the counter's row lock (held to commit, and taken before any row lock, so
-- batches of all replicas commit in position order and never deadlock), then
-- write every row guarded by the version it was planned on. A missed guard
-- aborts all of it with 40001 and the writer plans again. Returns the
-- position before the first one taken; commit wakes every replica's tailer.
-- op: 0 insert, 1 update, 2 delete, 3 delete marker only (a record created and
-- deleted within the batch: the create's position was acknowledged, so a reader
-- holding it must learn of the delete; written only while the row is still
-- absent, checked under the counter's lock); pos: the position offset (1-based).
-- The l_* arrays are the batch's events, every applied change in order (several
-- of one record included): position offset, record (NULLs for a delete), who
-- made it; each becomes one `progress_changes` row at base + offset.
CREATE OR REPLACE FUNCTION mangahub_write_batch(
    u text[], m int8[], c int8[], p int4[], s text[], v int8[], t int8[], ev int8[],
    op int2[], pos int4[], dev text[], orig text[], priv bool[], n_positions int4,
    l_pos int4[], l_u text[], l_m int8[], l_del bool[], l_c int8[], l_p int4[],
    l_s text[], l_v int8[], l_t int8[], l_dev text[], l_orig text[], l_priv bool[])
RETURNS int8 LANGUAGE plpgsql AS $$
DECLARE
    base    int8;
    written int8 := 0;
    cnt     int8;
BEGIN
    UPDATE progress_change_log SET last_position = last_position + n_positions
     WHERE id = 1 RETURNING last_position - n_positions INTO base;
    INSERT INTO user_progress (user_id, manga_id, current_chapter, page, status, version,
                               updated_at, change_seq, device, origin, private)
    SELECT x.u, x.m, x.c::numeric / 100, x.p, x.s, x.v,
           TIMESTAMPTZ 'epoch' + x.t * INTERVAL '1 microsecond', base + x.pos, x.dev, x.orig, x.priv
      FROM UNNEST(u, m, c, p, s, v, t, op, pos, dev, orig, priv)
        AS x(u, m, c, p, s, v, t, op, pos, dev, orig, priv)
     WHERE x.op = 0
    ON CONFLICT (user_id, manga_id) DO NOTHING;
    GET DIAGNOSTICS cnt = ROW_COUNT;
    written := written + cnt;
    UPDATE user_progress AS r
       SET current_chapter = x.c::numeric / 100, page = x.p, status = x.s, version = x.v,
           updated_at = TIMESTAMPTZ 'epoch' + x.t * INTERVAL '1 microsecond',
           change_seq = base + x.pos, device = x.dev, origin = x.orig, private = x.priv
      FROM UNNEST(u, m, c, p, s, v, t, ev, op, pos, dev, orig, priv)
        AS x(u, m, c, p, s, v, t, ev, op, pos, dev, orig, priv)
     WHERE x.op = 1 AND r.user_id = x.u AND r.manga_id = x.m AND r.version = x.ev;
    GET DIAGNOSTICS cnt = ROW_COUNT;
    written := written + cnt;
    DELETE FROM user_progress AS r
     USING UNNEST(u, m, ev, op) AS x(u, m, ev, op)
     WHERE x.op = 2 AND r.user_id = x.u AND r.manga_id = x.m AND r.version = x.ev;
    GET DIAGNOSTICS cnt = ROW_COUNT;
    written := written + cnt;
    SELECT count(*) INTO cnt FROM UNNEST(u, m, op) AS x(u, m, op)
     WHERE x.op = 3 AND NOT EXISTS (SELECT 1 FROM user_progress AS r
                                     WHERE r.user_id = x.u AND r.manga_id = x.m);
    written := written + cnt;
    IF written <> cardinality(u) THEN
        RAISE EXCEPTION 'guarded write matched % of % rows', written, cardinality(u)
            USING ERRCODE = '40001';
    END IF;
    -- Delete markers for deletes; a record created again drops its marker.
    INSERT INTO progress_tombstones (user_id, manga_id, change_seq, origin, deleted_at)
    SELECT x.u, x.m, base + x.pos, x.orig, now()
      FROM UNNEST(u, m, op, pos, orig) AS x(u, m, op, pos, orig) WHERE x.op IN (2, 3)
    ON CONFLICT (user_id, manga_id) DO UPDATE
       SET change_seq = EXCLUDED.change_seq, origin = EXCLUDED.origin, deleted_at = now();
    DELETE FROM progress_tombstones AS d
     USING UNNEST(u, m, op) AS x(u, m, op)
     WHERE x.op = 0 AND d.user_id = x.u AND d.manga_id = x.m;
    INSERT INTO progress_changes (position, user_id, manga_id, deleted, current_chapter,
                                  page, status, version, updated_at, device, origin, private)
    SELECT base + x.pos, x.u, x.m, x.del, x.c::numeric / 100, x.p, x.s, x.v,
           TIMESTAMPTZ 'epoch' + x.t * INTERVAL '1 microsecond', x.dev, x.orig, x.priv
      FROM UNNEST(l_pos, l_u, l_m, l_del, l_c, l_p, l_s, l_v, l_t, l_dev, l_orig, l_priv)
        AS x(pos, u, m, del, c, p, s, v, t, dev, orig, priv);
    PERFORM pg_notify('mangahub_changes', '');
    RETURN base;
END
$$;
