-- mizuban's store on PostgreSQL, version 1: the tables SQLite reached at its
-- version 10. Times are milliseconds since the Unix epoch, UTC, as on
-- SQLite, so both stores hold the same numbers.

-- Points by name; readings and rollups are keyed by the integer id.
CREATE TABLE points (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL UNIQUE);

CREATE TABLE readings (
    point BIGINT NOT NULL, t BIGINT NOT NULL, value DOUBLE PRECISION, quality SMALLINT NOT NULL,
    arrived BIGINT NOT NULL, PRIMARY KEY (point, t));
CREATE TABLE rollup_1m (
    point BIGINT NOT NULL, t BIGINT NOT NULL, n BIGINT NOT NULL, sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL, max DOUBLE PRECISION NOT NULL, PRIMARY KEY (point, t));
CREATE TABLE rollup_1h (
    point BIGINT NOT NULL, t BIGINT NOT NULL, n BIGINT NOT NULL, sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL, max DOUBLE PRECISION NOT NULL, PRIMARY KEY (point, t));

-- Every occurrence, open or closed, as JSON.
CREATE TABLE alarms (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, source TEXT NOT NULL, condition TEXT NOT NULL,
    open BOOLEAN NOT NULL, updated BIGINT NOT NULL, json TEXT NOT NULL);
CREATE INDEX alarms_open ON alarms (open) WHERE open;
CREATE INDEX alarms_updated ON alarms (updated);

-- Every transition and device command, in order.
CREATE TABLE journal (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at BIGINT NOT NULL, alarm_id TEXT NOT NULL,
    site TEXT NOT NULL, source TEXT NOT NULL, condition TEXT NOT NULL, action TEXT NOT NULL,
    from_state TEXT NOT NULL, to_state TEXT NOT NULL, who TEXT NOT NULL, why TEXT, event_time BIGINT,
    notify BOOLEAN NOT NULL, late BOOLEAN NOT NULL, priority TEXT NOT NULL DEFAULT '');
-- With several writers, seq order is not commit order (a row can commit
-- after a higher seq is visible). The notify engine therefore reads only up
-- to a seq it knows is final: see outbox_pg.rs, final_seq.
CREATE INDEX journal_alarm ON journal (alarm_id);
CREATE INDEX journal_site ON journal (site, at);

-- What the pipeline resumes from.
CREATE TABLE rule_state (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE device_state (device TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE msg_seen (
    device TEXT NOT NULL, boot BIGINT NOT NULL, seq BIGINT NOT NULL, arrived BIGINT NOT NULL,
    PRIMARY KEY (device, boot, seq));
CREATE INDEX msg_seen_arrived ON msg_seen (arrived);
CREATE TABLE raw_latest (site TEXT PRIMARY KEY, topic_payload TEXT NOT NULL, arrived BIGINT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE revoked_sessions (mac TEXT PRIMARY KEY, expires BIGINT NOT NULL);

-- Every input as received, for export and replay.
CREATE TABLE inputs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, arrived BIGINT NOT NULL, site TEXT,
    source SMALLINT NOT NULL, topic TEXT, body BYTEA NOT NULL);
CREATE INDEX inputs_arrived ON inputs (arrived);

-- The export feed: one row per commit while a sink is configured, deleted
-- once delivered. Read, like the journal, only up to a seq known to be final
-- (postgres.rs, final_seq), so several writers can share it.
CREATE TABLE feed (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, committed BIGINT NOT NULL,
    readings INTEGER NOT NULL, transitions INTEGER NOT NULL, body BYTEA NOT NULL);

-- Alerts: the notify engine's cursor into the journal, incidents, the
-- outbox of messages (written before anything is sent) and ack tokens.
CREATE TABLE notify_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE incidents (
    id TEXT PRIMARY KEY, group_key TEXT NOT NULL, policy TEXT NOT NULL, site TEXT NOT NULL,
    opened_at BIGINT NOT NULL, first_sent_at BIGINT, flush_at BIGINT, last_msg_at BIGINT,
    level BIGINT NOT NULL DEFAULT 0, next_level_at BIGINT, closed BOOLEAN NOT NULL DEFAULT FALSE,
    announced BIGINT NOT NULL DEFAULT 0, alarms TEXT NOT NULL);
CREATE INDEX incidents_open ON incidents (closed, group_key);
CREATE TABLE outbox (
    id TEXT PRIMARY KEY, incident_id TEXT NOT NULL, kind TEXT NOT NULL, person TEXT NOT NULL,
    contact_idx BIGINT NOT NULL, channel TEXT NOT NULL, level BIGINT NOT NULL,
    created_at BIGINT NOT NULL, state TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL, last_error TEXT, sent_at BIGINT, alarm_ids TEXT NOT NULL, body TEXT NOT NULL,
    seq BIGINT NOT NULL DEFAULT 0);
CREATE INDEX outbox_due ON outbox (state, next_at);
CREATE INDEX outbox_person ON outbox (person, created_at);
CREATE INDEX outbox_incident_seq ON outbox (incident_id, person, seq);
CREATE TABLE ack_tokens (
    token_hash TEXT PRIMARY KEY, code TEXT NOT NULL, incident_id TEXT NOT NULL, person TEXT NOT NULL,
    channel TEXT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT);
CREATE INDEX ack_code ON ack_tokens (code);
