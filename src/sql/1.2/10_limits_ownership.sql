-- 1.2, issue 13 item 1 and issue 12 items 5, 9 and "worker ids are one
-- namespace": bounded ids, a bounded dead_after, and workers that belong to
-- the role that created them. See docs/security.md.

-- An installation that already holds rows these constraints would refuse is
-- not updated: the update stops here, changing nothing, and says which rows
-- and how to fix them. (Leaving the constraints NOT VALID would let the
-- update pass, but the next dump of these config tables could then not be
-- restored: COPY would refuse the same rows, and with them the whole table.)
DO $$
DECLARE
    n_ids   bigint;
    n_types bigint;
    n_dead  bigint;
    sample  text;
BEGIN
    SELECT pg_catalog.count(*),
           pg_catalog.string_agg(pg_catalog.quote_literal(pg_catalog.left(w.worker_id, 40)), ', ')
      INTO n_ids, sample
      FROM @extschema@.worker_heartbeats w
     WHERE pg_catalog.octet_length(w.worker_id) OPERATOR(pg_catalog.>) 200
        OR pg_catalog.octet_length(w.worker_type) OPERATOR(pg_catalog.>) 200
        OR pg_catalog.btrim(w.worker_id, E' \t\n\r') OPERATOR(pg_catalog.=) ''
        OR pg_catalog.btrim(w.worker_type, E' \t\n\r') OPERATOR(pg_catalog.=) '';
    IF n_ids OPERATOR(pg_catalog.>) 0 THEN
        RAISE EXCEPTION 'cannot update worker_heartbeat to 1.2: % row(s) of worker_heartbeats have an empty worker_id or worker_type, or one longer than 200 bytes', n_ids
            USING ERRCODE = 'check_violation',
                  DETAIL = pg_catalog.format('Such rows were never written by the extension''s functions; 1.2 refuses them with a CHECK constraint. Worker ids (cut to 40 characters): %s.', pg_catalog.left(sample, 2000)),
                  HINT = 'Delete or shorten them, e.g. DELETE FROM @extschema@.worker_heartbeats WHERE octet_length(worker_id) > 200 OR octet_length(worker_type) > 200 OR btrim(worker_id) = '''' OR btrim(worker_type) = ''''; then run ALTER EXTENSION worker_heartbeat UPDATE again.';
    END IF;
    SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.octet_length(t.worker_type) OPERATOR(pg_catalog.>) 200
                                          OR pg_catalog.btrim(t.worker_type, E' \t\n\r') OPERATOR(pg_catalog.=) ''),
           pg_catalog.count(*) FILTER (WHERE t.dead_after OPERATOR(pg_catalog.>) interval '10 years')
      INTO n_types, n_dead
      FROM @extschema@.worker_types t;
    IF n_types OPERATOR(pg_catalog.>) 0 OR n_dead OPERATOR(pg_catalog.>) 0 THEN
        RAISE EXCEPTION 'cannot update worker_heartbeat to 1.2: worker_types has % row(s) with an empty or over-long (> 200 bytes) worker_type and % with a dead_after over 10 years', n_types, n_dead
            USING ERRCODE = 'check_violation',
                  HINT = 'Delete those rows or lower their dead_after (set_worker_type_dead_after(type, ''1 day'')), then run ALTER EXTENSION worker_heartbeat UPDATE again.';
    END IF;
END
$$;

ALTER TABLE @extschema@.worker_heartbeats
    ADD CONSTRAINT worker_heartbeats_worker_id_check
        CHECK (pg_catalog.octet_length(worker_id) OPERATOR(pg_catalog.<=) 200
               AND pg_catalog.btrim(worker_id, E' \t\n\r') OPERATOR(pg_catalog.<>) ''),
    ADD CONSTRAINT worker_heartbeats_worker_type_check
        CHECK (pg_catalog.octet_length(worker_type) OPERATOR(pg_catalog.<=) 200
               AND pg_catalog.btrim(worker_type, E' \t\n\r') OPERATOR(pg_catalog.<>) '');
ALTER TABLE @extschema@.worker_types
    ADD CONSTRAINT worker_types_worker_type_check
        CHECK (pg_catalog.octet_length(worker_type) OPERATOR(pg_catalog.<=) 200
               AND pg_catalog.btrim(worker_type, E' \t\n\r') OPERATOR(pg_catalog.<>) '');
-- dead_after: positive, and at most 10 years. Deadlines are computed as
-- last_heartbeat_at + dead_after and now() - dead_after in the views and the
-- pass; an unbounded interval overflows timestamptz (22008) and takes every
-- view and every pass down with it. Ten years is far beyond any useful
-- silence and far from any overflow.
ALTER TABLE @extschema@.worker_types
    DROP CONSTRAINT worker_types_dead_after_check,
    ADD CONSTRAINT worker_types_dead_after_check
        CHECK (dead_after OPERATOR(pg_catalog.>) interval '0'
               AND dead_after OPERATOR(pg_catalog.<=) interval '10 years');

CREATE OR REPLACE FUNCTION @extschema@.set_worker_type_dead_after(p_worker_type text, p_dead_after interval)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_worker_type IS NULL OR pg_catalog.btrim(p_worker_type, E' \t\n\r') OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'p_worker_type must not be null or empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.octet_length(p_worker_type) OPERATOR(pg_catalog.>) 200 THEN
        RAISE EXCEPTION 'p_worker_type is too long (% bytes)', pg_catalog.octet_length(p_worker_type)
            USING ERRCODE = 'string_data_right_truncation', DETAIL = 'At most 200 bytes are allowed.';
    END IF;
    IF p_dead_after IS NULL THEN
        DELETE FROM @extschema@.worker_types t WHERE t.worker_type OPERATOR(pg_catalog.=) p_worker_type;
    ELSIF p_dead_after OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION 'p_dead_after must be positive, not %', p_dead_after
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass NULL to go back to worker_heartbeat.dead_after.';
    ELSIF p_dead_after OPERATOR(pg_catalog.>) interval '10 years' THEN
        RAISE EXCEPTION 'p_dead_after must be at most 10 years, not %', p_dead_after
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A worker silent for that long is dead; to keep a worker that never beats, stop it with stop_worker().';
    ELSE
        INSERT INTO @extschema@.worker_types AS t (worker_type, dead_after)
        VALUES (p_worker_type, p_dead_after)
        ON CONFLICT (worker_type) DO UPDATE SET dead_after = EXCLUDED.dead_after;
    END IF;
END
$$;

-- Every worker belongs to a role: the role that called upsert_worker_heartbeat
-- first (the caller itself, not the session user: a SECURITY DEFINER wrapper
-- acts as its owner). Only that role, its members, and members of the
-- extension's owner (superusers) may beat, stop, retype or rewrite it, unless
-- worker_heartbeat.shared_worker_ids is on. NULL (workers from before 1.2):
-- the next role that beats it adopts it. regrole, so that a dump keeps the
-- role's name, not its oid.
ALTER TABLE @extschema@.worker_heartbeats ADD COLUMN owner_role pg_catalog.regrole;
COMMENT ON COLUMN @extschema@.worker_heartbeats.owner_role IS
    'The role the worker belongs to (the first caller of upsert_worker_heartbeat); NULL: not yet adopted.';
-- Counts a role's workers (worker_heartbeat.max_workers_per_role); never
-- changes on a heartbeat, so heartbeats stay HOT.
CREATE INDEX worker_heartbeats_owner_idx ON @extschema@.worker_heartbeats (owner_role);

-- To know their caller these two must not switch user on entry: they are
-- SECURITY INVOKER now and switch to the extension's owner themselves, after
-- noting who called (GetUserId() on entry). EXECUTE grants still decide who
-- may call them; the search_path stays pinned.
ALTER FUNCTION @extschema@.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean)
    SECURITY INVOKER;
ALTER FUNCTION @extschema@.stop_worker(text) SECURITY INVOKER;
