-- Job results (hundreds of kB of JSON per 1000-student batch) compressed with
-- lz4 instead of pglz: pglz_compress was 5 % of Postgres's CPU under the
-- benchmark load. Only new values are affected; old ones stay readable. A
-- server built without lz4 keeps pglz. Compatible with the running release.
-- Metadata only (no rewrite), but it takes an ACCESS EXCLUSIVE lock on jobs for
-- an instant, after waiting for the batch transactions in flight.
DO $$
BEGIN
    ALTER TABLE jobs ALTER COLUMN results SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 not available; job results stay pglz-compressed';
END
$$;
