-- `events_owner (owner, origin, seq)` cost PostgreSQL an index insert for every replicated
-- event, to serve takeover only. A peer's own rows (owner = origin) are walked by the
-- primary key (origin, seq) instead; this partial index holds only the rows claimed by an
-- instance other than their origin, which are few and short-lived (a takeover in progress).
CREATE INDEX events_claimed ON {schema}.events (owner, origin, seq) WHERE owner <> origin;
DROP INDEX IF EXISTS {schema}.events_owner;
