-- Idempotency keys across the fleet: which event a (source, key) belongs to, until when.
-- A claim is made before the event is stored locally, unconfirmed; it is confirmed once the
-- event is durable. An unconfirmed claim older than a few seconds belongs to no one (its
-- instance failed between the two steps) and may be claimed again.
CREATE TABLE {schema}.dedup_keys (
    source      text NOT NULL,
    key         text NOT NULL,
    event_id    uuid NOT NULL,
    origin      text NOT NULL,
    expires_at  timestamptz NOT NULL,
    confirmed   boolean NOT NULL DEFAULT false,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, key)
);
CREATE INDEX dedup_keys_expires_at ON {schema}.dedup_keys (expires_at);
