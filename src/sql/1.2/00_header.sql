-- 1.2: security and reliability (issues "Security 1.2" and "Reliability 1.2").
-- Parts of this update script are concatenated in file-name order; each part
-- says what it fixes. An existing 1.1 installation is fixed by
-- ALTER EXTENSION worker_heartbeat UPDATE.

\echo Use "ALTER EXTENSION worker_heartbeat UPDATE TO '1.2'" to load this file. \quit

