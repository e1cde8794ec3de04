-- The queue table used by the example workers (C++, Python, Node), the demo and
-- the worker tests. Run after CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline.
CREATE TABLE public.tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           uuid NOT NULL DEFAULT gen_random_uuid(),
    payload          text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'claimed', 'done', 'failed')),
    claimed_by       text,         -- worker_id holding the lease
    lease_expires_at timestamptz,  -- lease deadline
    lease_token      bigint,       -- fencing token (extension 1.1)
    attempts         integer NOT NULL DEFAULT 0,
    done_by          text,
    done_at          timestamptz
);

-- The reaper looks rows up by worker and by deadline.
CREATE INDEX ON public.tasks (claimed_by);
CREATE INDEX ON public.tasks (lease_expires_at);

-- Released leases go back to 'pending'. With the 1.1 fenced-lease API the
-- table also gets a token column, an attempts counter and a poison-pill limit.
DO $$
BEGIN
    IF to_regprocedure('pm_pipeline.claim_leases(anyelement,text,integer,interval,jsonb,jsonb)') IS NOT NULL THEN
        PERFORM pm_pipeline.register_lease_table('public.tasks', 'claimed_by', 'lease_expires_at',
            '{"state": "pending"}', p_token_column => 'lease_token',
            p_attempts_column => 'attempts', p_max_attempts => 5,
            p_on_exhausted => '{"state": "failed"}');
    ELSE
        PERFORM pm_pipeline.register_lease_table('public.tasks', 'claimed_by', 'lease_expires_at',
            '{"state": "pending"}');
    END IF;
END
$$;
