-- Settling 20,000 outbox rows, 1,000 per round, each round its own transaction:
-- as before (UPDATE published_at, a column in the partial index's predicate) and now
-- (DELETE). A copy of the outbox with its indexes; rows of ~400 bytes like an event.
\set ON_ERROR_STOP on
DROP TABLE IF EXISTS settle_update, settle_delete;
CREATE TABLE settle_update (LIKE outbox INCLUDING ALL);
CREATE TABLE settle_delete (LIKE outbox INCLUDING ALL);
INSERT INTO settle_update (topic, key, value)
  SELECT 'stock.changed', convert_to('v' || g % 500, 'UTF8'), convert_to(repeat('x', 400), 'UTF8')
  FROM generate_series(1, 20000) g;
INSERT INTO settle_delete (topic, key, value) SELECT topic, key, value FROM settle_update ORDER BY id;
VACUUM ANALYZE settle_update, settle_delete;
CREATE TEMP TABLE figures (how text, ms float8, wal_bytes numeric);
DO $$
DECLARE t0 timestamptz; w0 pg_lsn; r int;
BEGIN
  t0 := clock_timestamp(); w0 := pg_current_wal_insert_lsn();
  FOR r IN 0..19 LOOP
    UPDATE settle_update SET published_at = now()
      WHERE id IN (SELECT id FROM settle_update WHERE published_at IS NULL ORDER BY id LIMIT 1000);
    COMMIT;
  END LOOP;
  INSERT INTO figures VALUES ('UPDATE published_at',
    extract(epoch FROM clock_timestamp() - t0) * 1000, pg_current_wal_insert_lsn() - w0);
  COMMIT;
  t0 := clock_timestamp(); w0 := pg_current_wal_insert_lsn();
  FOR r IN 0..19 LOOP
    DELETE FROM settle_delete
      WHERE id IN (SELECT id FROM settle_delete WHERE published_at IS NULL ORDER BY id LIMIT 1000);
    COMMIT;
  END LOOP;
  INSERT INTO figures VALUES ('DELETE',
    extract(epoch FROM clock_timestamp() - t0) * 1000, pg_current_wal_insert_lsn() - w0);
  COMMIT;
END $$;
SELECT pg_stat_force_next_flush();
SELECT how, round(ms::numeric, 1) AS ms, pg_size_pretty(wal_bytes) AS wal FROM figures;
SELECT relname, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
 WHERE relname LIKE 'settle_%' ORDER BY relname;
SELECT relname, pg_size_pretty(pg_relation_size(oid)) AS size FROM pg_class
 WHERE relname LIKE 'settle_%' ORDER BY relname;
DROP TABLE settle_update, settle_delete;
