-- The fleet's members: one row per instance, renewed by its heartbeat.
CREATE TABLE {schema}.instances (
    instance_id      text PRIMARY KEY,
    -- Bumped by a peer that takes this instance's events over (the fencing token).
    epoch            bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz NOT NULL,
    heartbeat_at     timestamptz NOT NULL,
    started_at       timestamptz NOT NULL,
    version          text NOT NULL,
    pending_events   bigint NOT NULL DEFAULT 0,
    dlq_entries      bigint NOT NULL DEFAULT 0
);
