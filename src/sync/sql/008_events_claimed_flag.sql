-- A row a takeover claimed stays marked until the claim is finished (imported by the
-- claimer, deleted here), whoever owns it: "owned by someone other than its origin" missed
-- rows claimed back by their own origin from a peer that died mid-takeover, which then
-- looked like the origin's own rows although its store no longer held them.
ALTER TABLE {schema}.events ADD COLUMN claimed boolean NOT NULL DEFAULT false;
UPDATE {schema}.events SET claimed = true WHERE owner <> origin;
-- Takeover walks the claimed rows of an owner in order; they are few and short-lived.
CREATE INDEX events_claims ON {schema}.events (owner, origin, seq) WHERE claimed;
DROP INDEX IF EXISTS {schema}.events_claimed;
-- A build from before this migration claims rows without the flag; its claims now fail (and
-- its takeover with them, logged) instead of leaving rows that no newer instance would
-- finish. Every row satisfies it after the update above; NOT VALID skips the scan that
-- would prove it.
ALTER TABLE {schema}.events ADD CONSTRAINT events_claim_flagged
    CHECK (owner = origin OR claimed) NOT VALID;
