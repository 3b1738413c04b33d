-- Nothing looks replicated events up by id (takeover matches its held events by owner and
-- origin), and the index cost PostgreSQL an insert per replicated event.
DROP INDEX IF EXISTS {schema}.events_event_id;
