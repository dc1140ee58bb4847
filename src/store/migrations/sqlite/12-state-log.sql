-- The state rows of each commit (rule state, device state, the latest raw
-- message, accepted message ids), in arrival order. Each of their tables is
-- keyed by device or site, so every message rewrote four pages of four
-- tables, scattered across the fleet; appended here they share one page.
-- The writer folds the log into those tables every few seconds, each key
-- once with its newest row, and empties it; a database opened with rows here
-- is folded first (see src/store/state_log.rs). `kind`: 1 rule state, 2
-- device state, 3 latest raw message, 4 accepted message (boot, seq).
CREATE TABLE state_log (
    id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, key TEXT NOT NULL, body TEXT,
    boot INTEGER, seq INTEGER, arrived INTEGER);
