-- The alarm's priority at the time of each transition (the journal's priority filter).
ALTER TABLE journal ADD COLUMN priority TEXT NOT NULL DEFAULT '';
