-- Events a peer took over from their origin and has in its own outbox now: the origin reads
-- these when it comes back (reconciliation), drops them locally without publishing, and
-- deletes the rows.
CREATE TABLE {schema}.takeovers (
    origin    text NOT NULL,
    seq       bigint NOT NULL,
    event_id  uuid NOT NULL,
    taken_by  text NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, seq)
);
