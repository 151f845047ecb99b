-- Aborts the statement that calls it when a guarded write matched fewer rows
-- than planned: another replica changed a row first. SQLSTATE 40001 makes the
-- whole batch statement roll back, and the writer plans it again on fresh rows.
CREATE OR REPLACE FUNCTION mangahub_assert_written(written BIGINT, planned BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    IF written <> planned THEN
        RAISE EXCEPTION 'guarded write matched % of % rows', written, planned
            USING ERRCODE = '40001';
    END IF;
    RETURN written;
END
$$;
