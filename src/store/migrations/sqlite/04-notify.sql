-- Alerts: the notify engine's journal cursor, incidents, the outbox, ack tokens.
CREATE TABLE IF NOT EXISTS notify_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, group_key TEXT NOT NULL, policy TEXT NOT NULL, site TEXT NOT NULL,
    opened_at INTEGER NOT NULL, first_sent_at INTEGER, flush_at INTEGER, last_msg_at INTEGER,
    level INTEGER NOT NULL DEFAULT 0, next_level_at INTEGER, closed INTEGER NOT NULL DEFAULT 0,
    announced INTEGER NOT NULL DEFAULT 0, alarms TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents(closed, group_key);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, incident_id TEXT NOT NULL, kind TEXT NOT NULL, person TEXT NOT NULL,
    contact_idx INTEGER NOT NULL, channel TEXT NOT NULL, level INTEGER NOT NULL,
    created_at INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL, last_error TEXT, sent_at INTEGER, alarm_ids TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
CREATE INDEX IF NOT EXISTS outbox_person ON outbox(person, created_at);
CREATE INDEX IF NOT EXISTS outbox_incident ON outbox(incident_id);
CREATE TABLE IF NOT EXISTS ack_tokens (
    token_hash TEXT PRIMARY KEY, code TEXT NOT NULL, incident_id TEXT NOT NULL, person TEXT NOT NULL,
    channel TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
CREATE INDEX IF NOT EXISTS ack_code ON ack_tokens(code);
