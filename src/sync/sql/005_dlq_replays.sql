-- A dead-letter entry replayed from another instance than its origin: the replaying instance
-- becomes its owner, puts it in its own outbox, and stamps `replayed_at`; the origin then
-- drops its local copy and the row. Rows whose owner is not their origin are not listed.
ALTER TABLE {schema}.dlq ADD COLUMN replayed_at timestamptz;
