-- A record created and deleted within one batch (op 3) gets a delete marker
-- at the delete's position although it never had a row: the create's
-- position was acknowledged, so a reader holding it must learn of the delete.
-- Its guard is that the row is still absent (checked under the counter's
-- lock, which every batch takes first, so no other batch is in flight).
-- Otherwise as in 0004. op: 0 insert, 1 update, 2 delete, 3 marker only.
CREATE OR REPLACE FUNCTION mangahub_write_batch(
    u text[], m int8[], c int8[], p int4[], s text[], v int8[], t int8[], ev int8[],
    op int2[], pos int4[], dev text[], orig text[], priv bool[], n_positions int4)
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
    PERFORM pg_notify('mangahub_changes', '');
    RETURN base;
END
$$;
