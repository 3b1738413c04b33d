-- The replicated outbox: every event an instance holds and has not settled, copied from its
-- change feed. A row is removed when its event is settled (published everywhere it had to
-- go, or dead-lettered, which moves it to `dlq`).
CREATE TABLE {schema}.events (
    -- The instance that accepted the event, and its seq in that instance's store.
    origin       text NOT NULL,
    seq          bigint NOT NULL,
    event_id     uuid NOT NULL,
    source       text NOT NULL,
    event_type   text NOT NULL,
    received_at  timestamptz NOT NULL,
    -- The kept request headers: [[name, value], ...].
    headers      jsonb NOT NULL,
    -- The request body, byte for byte.
    body         bytea NOT NULL,
    -- Per destination: name, target, status, attempts, last error; null until routed.
    destinations jsonb,
    -- The same delivery state exactly as the origin's store keeps it (its own encoding).
    delivery     bytea,
    -- Who publishes it: the origin, until a peer takes it over.
    owner        text NOT NULL,
    owner_epoch  bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, seq)
);
CREATE INDEX events_event_id ON {schema}.events (event_id);
-- Takeover walks a peer's rows in order: WHERE owner = $1 ORDER BY origin, seq.
CREATE INDEX events_owner ON {schema}.events (owner, origin, seq);

-- The replicated dead-letter queue.
CREATE TABLE {schema}.dlq (
    origin           text NOT NULL,
    dlq_seq          bigint NOT NULL,
    event_id         uuid NOT NULL,
    source           text NOT NULL,
    event_type       text NOT NULL,
    received_at      timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL,
    reason           text NOT NULL,
    -- Per destination given up on: name, target, reason, attempts, last error.
    destinations     jsonb NOT NULL,
    -- The entry exactly as the origin's store keeps it (its own encoding, body included).
    record           bytea NOT NULL,
    owner            text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, dlq_seq)
);
CREATE INDEX dlq_event_id ON {schema}.dlq (event_id);

-- How far behind each instance's replication is, as of its last heartbeat.
ALTER TABLE {schema}.instances ADD COLUMN sync_lag_events bigint NOT NULL DEFAULT 0;
