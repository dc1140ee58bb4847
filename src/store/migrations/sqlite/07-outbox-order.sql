-- Outbox order by an explicit per-incident sequence, not SQLite's rowid: what
-- a person hears about one incident comes out in the order it was planned,
-- whatever store holds it and however many writers share it (an incident
-- belongs to one site, so to one writer). Existing rows keep their order.
ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET seq = rowid;
CREATE INDEX outbox_incident_seq ON outbox(incident_id, person, seq);
