-- Board sessions ended by logout, until they would have expired.
CREATE TABLE IF NOT EXISTS revoked_sessions (mac TEXT PRIMARY KEY, expires INTEGER NOT NULL);
