-- The heartbeat API. Functions that write are SECURITY DEFINER (the tables
-- have no write policies); every function has a fixed search_path.

CREATE FUNCTION @extschema@.upsert_worker_heartbeat(
    p_worker_id        text,
    p_worker_type      text,
    p_status           text        DEFAULT 'active',
    p_current_run_id   uuid        DEFAULT NULL,
    p_current_task     text        DEFAULT NULL,
    p_lease_expires_at timestamptz DEFAULT NULL,
    p_metadata         jsonb       DEFAULT NULL,
    p_session_bound    boolean     DEFAULT false)
RETURNS void
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_upsert_worker_heartbeat';
COMMENT ON FUNCTION @extschema@.upsert_worker_heartbeat(text, text, text, uuid, text, timestamptz, jsonb, boolean) IS
    'Heartbeat of a worker: creates it, refreshes it, or brings it back from the dead.';

CREATE FUNCTION @extschema@.stop_worker(p_worker_id text)
RETURNS boolean
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_stop_worker';
COMMENT ON FUNCTION @extschema@.stop_worker(text) IS
    'Graceful stop: the worker is stopped and its leases are released at once. False if unknown.';

CREATE FUNCTION @extschema@.get_active_workers()
RETURNS SETOF @extschema@.v_active_workers
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM @extschema@.v_active_workers ORDER BY worker_type, worker_id $$;

CREATE FUNCTION @extschema@.get_dead_workers()
RETURNS SETOF @extschema@.v_dead_workers
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM @extschema@.v_dead_workers ORDER BY worker_type, worker_id $$;

-- active_workers counts every live worker (active, idle or processing), as in
-- the seed's design; idle_workers and processing_workers break it down.
CREATE FUNCTION @extschema@.get_worker_stats()
RETURNS TABLE (worker_type text, total_workers bigint, active_workers bigint, idle_workers bigint,
               processing_workers bigint, dead_workers bigint, stopped_workers bigint,
               oldest_heartbeat timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.worker_type,
           pg_catalog.count(*),
           pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.<>) 'stopped' AND NOT l.is_dead),
           pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'idle' AND NOT l.is_dead),
           pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'processing' AND NOT l.is_dead),
           pg_catalog.count(*) FILTER (WHERE l.is_dead),
           pg_catalog.count(*) FILTER (WHERE l.status OPERATOR(pg_catalog.=) 'stopped'),
           pg_catalog.min(l.last_heartbeat_at)
      FROM @extschema@.worker_liveness l
     GROUP BY l.worker_type
     ORDER BY l.worker_type
$$;

CREATE FUNCTION @extschema@.get_worker_health_summary()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'total_active_workers', (SELECT pg_catalog.count(*) FROM @extschema@.v_active_workers),
        'total_dead_workers', (SELECT pg_catalog.count(*) FROM @extschema@.v_dead_workers),
        'dead_workers', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(d) ORDER BY d.worker_type, d.worker_id)
                                    FROM @extschema@.v_dead_workers d), '[]'::pg_catalog.jsonb),
        'stats_by_type', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(s) ORDER BY s.worker_type)
                                     FROM @extschema@.get_worker_stats() s), '[]'::pg_catalog.jsonb))
$$;

CREATE FUNCTION @extschema@.cleanup_stale_workers(p_threshold_minutes integer DEFAULT 60)
RETURNS integer
LANGUAGE c VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_cleanup_stale_workers';
COMMENT ON FUNCTION @extschema@.cleanup_stale_workers(integer) IS
    'Removes workers stopped or dead for longer than the threshold, unless they still hold a lease.';

-- The reaper only scans the workers when one of them can be overdue. Rows
-- written behind our functions' back (a restore, a COPY, an UPDATE of
-- worker_types) may change that: these triggers tell it to look again.
CREATE FUNCTION @extschema@._worker_rows_changed()
RETURNS trigger
LANGUAGE c VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wh_worker_rows_changed';
CREATE TRIGGER reaper_schedule AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.worker_types
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_rows_changed();
CREATE TRIGGER reaper_schedule AFTER INSERT ON @extschema@.worker_heartbeats
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._worker_rows_changed();

CREATE FUNCTION @extschema@.set_worker_type_dead_after(p_worker_type text, p_dead_after interval)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_worker_type IS NULL OR pg_catalog.btrim(p_worker_type) OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'p_worker_type must not be null or empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_dead_after IS NULL THEN
        DELETE FROM @extschema@.worker_types t WHERE t.worker_type OPERATOR(pg_catalog.=) p_worker_type;
    ELSIF p_dead_after OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION 'p_dead_after must be positive, not %', p_dead_after
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass NULL to go back to worker_heartbeat.dead_after.';
    ELSE
        INSERT INTO @extschema@.worker_types AS t (worker_type, dead_after)
        VALUES (p_worker_type, p_dead_after)
        ON CONFLICT (worker_type) DO UPDATE SET dead_after = EXCLUDED.dead_after;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.set_worker_type_dead_after(text, interval) IS
    'Silence after which workers of this type are dead; NULL removes the override.';
