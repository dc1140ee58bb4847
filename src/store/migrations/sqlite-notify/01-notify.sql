-- The notification tables in a file of their own (`<store>-notify.db`), so
-- that the notify engine and the store's writer never wait for each other's
-- write lock. The same tables as the store's migrations 04 and 07 made in the
-- store's file; a database from before the move has its rows copied here in
-- this migration's transaction (those tables stay in the store's file, unused).
CREATE TABLE notify_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE incidents (
    id TEXT PRIMARY KEY, group_key TEXT NOT NULL, policy TEXT NOT NULL, site TEXT NOT NULL,
    opened_at INTEGER NOT NULL, first_sent_at INTEGER, flush_at INTEGER, last_msg_at INTEGER,
    level INTEGER NOT NULL DEFAULT 0, next_level_at INTEGER, closed INTEGER NOT NULL DEFAULT 0,
    announced INTEGER NOT NULL DEFAULT 0, alarms TEXT NOT NULL);
CREATE INDEX incidents_open ON incidents(closed, group_key);
CREATE TABLE outbox (
    id TEXT PRIMARY KEY, incident_id TEXT NOT NULL, kind TEXT NOT NULL, person TEXT NOT NULL,
    contact_idx INTEGER NOT NULL, channel TEXT NOT NULL, level INTEGER NOT NULL,
    created_at INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL, last_error TEXT, sent_at INTEGER, alarm_ids TEXT NOT NULL, body TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0);
CREATE INDEX outbox_due ON outbox(state, next_at);
CREATE INDEX outbox_person ON outbox(person, created_at);
CREATE INDEX outbox_incident ON outbox(incident_id);
CREATE INDEX outbox_incident_seq ON outbox(incident_id, person, seq);
CREATE TABLE ack_tokens (
    token_hash TEXT PRIMARY KEY, code TEXT NOT NULL, incident_id TEXT NOT NULL, person TEXT NOT NULL,
    channel TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
CREATE INDEX ack_code ON ack_tokens(code);
