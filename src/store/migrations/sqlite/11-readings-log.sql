-- The readings as they are acknowledged, in arrival order. A commit appends
-- its readings here (a few sequential pages) instead of inserting each into
-- `readings`, whose (point, t) key put every reading of a message on a page
-- of its own: at 10,000 messages/s that was 6 of the ~9 pages each message
-- rewrote, 29 KB written per 370-byte message. The writer merges a point's
-- logged readings into `readings` and the rollups later, many at once, and
-- drops the log rows behind the oldest one not merged yet (see
-- src/store/staging.rs). A row here may already be merged: merging is
-- INSERT OR IGNORE, so replaying it after a restart changes nothing.
CREATE TABLE readings_log (
    id INTEGER PRIMARY KEY, point INTEGER NOT NULL, t INTEGER NOT NULL, value REAL,
    quality INTEGER NOT NULL, arrived INTEGER NOT NULL);
