-- The board's session key and other service-wide settings kept across restarts.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
