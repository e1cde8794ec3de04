-- 1.3: fleet control (issue "Fleet control 1.3"): drain and pause, progress
-- checkpoints carried across a death, death forensics, zombie termination.
-- Parts of this update script are concatenated in file-name order; each part
-- says what it adds. An existing 1.2 installation gets them with
-- ALTER EXTENSION worker_heartbeat UPDATE.

\echo Use "ALTER EXTENSION worker_heartbeat UPDATE TO '1.3'" to load this file. \quit

