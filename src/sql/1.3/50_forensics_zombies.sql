
-- Death forensics and zombie termination (issue 16, sections 3 and 4;
-- docs/fleet-control.md). The forensics live in worker_events.details (no
-- schema change). Zombie termination is opt-in: the setting
-- worker_heartbeat.terminate_zombies, overridden per worker type by
-- worker_types.terminate_zombies (NULL: follow the setting).
ALTER TABLE @extschema@.worker_types ADD COLUMN terminate_zombies boolean;
COMMENT ON COLUMN @extschema@.worker_types.terminate_zombies IS
    'Whether the reaper terminates the still running backend of a session-bound worker of this type it declares dead by timeout; NULL: worker_heartbeat.terminate_zombies.';
-- A type may now override only terminate_zombies: dead_after NULL means the
-- setting (every reader already takes COALESCE(t.dead_after, setting)).
ALTER TABLE @extschema@.worker_types ALTER COLUMN dead_after DROP NOT NULL;
ALTER TABLE @extschema@.worker_types
    ADD CONSTRAINT worker_types_overrides_something
        CHECK (dead_after IS NOT NULL OR terminate_zombies IS NOT NULL);

-- NULL dead_after: back to the setting; the row stays while it overrides
-- terminate_zombies.
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
        DELETE FROM @extschema@.worker_types t
         WHERE t.worker_type OPERATOR(pg_catalog.=) p_worker_type AND t.terminate_zombies IS NULL;
        UPDATE @extschema@.worker_types t SET dead_after = NULL
         WHERE t.worker_type OPERATOR(pg_catalog.=) p_worker_type AND t.dead_after IS NOT NULL;
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

-- p_enabled NULL: back to the setting. Not executable by PUBLIC (an
-- operator's function, like set_worker_type_dead_after): turning it on lets
-- the reaper terminate backends (docs/security.md).
CREATE FUNCTION @extschema@.set_worker_type_terminate_zombies(p_worker_type text, p_enabled boolean)
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
    IF p_enabled IS NULL THEN
        DELETE FROM @extschema@.worker_types t
         WHERE t.worker_type OPERATOR(pg_catalog.=) p_worker_type AND t.dead_after IS NULL;
        UPDATE @extschema@.worker_types t SET terminate_zombies = NULL
         WHERE t.worker_type OPERATOR(pg_catalog.=) p_worker_type AND t.terminate_zombies IS NOT NULL;
    ELSE
        INSERT INTO @extschema@.worker_types AS t (worker_type, terminate_zombies)
        VALUES (p_worker_type, p_enabled)
        ON CONFLICT (worker_type) DO UPDATE SET terminate_zombies = EXCLUDED.terminate_zombies;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.set_worker_type_terminate_zombies(text, boolean) IS
    'Per worker type override of worker_heartbeat.terminate_zombies (NULL: back to the setting).';
REVOKE ALL ON FUNCTION @extschema@.set_worker_type_terminate_zombies(text, boolean) FROM PUBLIC;
