-- The queue table used by the example workers (C++, Python, Node), the demo and
-- the worker tests: public.tasks, registered as a fenced lease table.
--
--   psql -v ON_ERROR_STOP=1 -f examples/sql/queue.sql                    # finds the extension's schema
--   psql -v ON_ERROR_STOP=1 -v schema='Worker HB' -f examples/sql/queue.sql   # or names it
--
-- Run it after CREATE EXTENSION worker_heartbeat (in any schema). It is one
-- transaction: either the table exists and is registered, or nothing changed.
\set ON_ERROR_STOP on
\if :{?schema}
\else
SELECT n.nspname AS schema
  FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'worker_heartbeat' \gset
\endif

BEGIN;

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

-- The reaper looks rows up by worker and by deadline; extend, complete, fail
-- and check look them up by token.
CREATE INDEX ON public.tasks (claimed_by);
CREATE INDEX ON public.tasks (lease_expires_at);
CREATE INDEX ON public.tasks (lease_token);

-- Released leases go back to 'pending'. With the 1.1 fenced-lease API the
-- table also gets a token column, an attempts counter and a poison-pill limit.
SELECT pg_catalog.to_regprocedure(pg_catalog.format(
           '%I.claim_leases(anyelement,text,integer,interval,jsonb,jsonb)', :'schema')) IS NOT NULL AS fenced \gset
\if :fenced
SELECT :"schema".register_lease_table('public.tasks', 'claimed_by', 'lease_expires_at',
    '{"state": "pending"}', p_token_column => 'lease_token',
    p_attempts_column => 'attempts', p_max_attempts => 5,
    p_on_exhausted => '{"state": "failed"}') \g /dev/null
\else
SELECT :"schema".register_lease_table('public.tasks', 'claimed_by', 'lease_expires_at',
    '{"state": "pending"}') \g /dev/null
\endif

COMMIT;
