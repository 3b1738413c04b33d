-- A row a takeover claimed stays marked until the claim is finished (imported by the
-- claimer, deleted here), whoever owns it: "owned by someone other than its origin" missed
-- rows claimed back by their own origin from a peer that died mid-takeover, which then
-- looked like the origin's own rows although its store no longer held them.
ALTER TABLE {schema}.events ADD COLUMN claimed boolean NOT NULL DEFAULT false;
UPDATE {schema}.events SET claimed = true WHERE owner <> origin;
-- Takeover walks the claimed rows of an owner in order; they are few and short-lived.
CREATE INDEX events_claims ON {schema}.events (owner, origin, seq) WHERE claimed;
DROP INDEX IF EXISTS {schema}.events_claimed;
