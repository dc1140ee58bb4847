CREATE TABLE IF NOT EXISTS readings (
    point TEXT NOT NULL, t INTEGER NOT NULL, value REAL, quality INTEGER NOT NULL, arrived INTEGER NOT NULL,
    PRIMARY KEY (point, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, source TEXT NOT NULL, condition TEXT NOT NULL,
    open INTEGER NOT NULL, updated INTEGER NOT NULL, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms(open);
CREATE INDEX IF NOT EXISTS alarms_updated ON alarms(updated);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, alarm_id TEXT NOT NULL, site TEXT NOT NULL,
    source TEXT NOT NULL, condition TEXT NOT NULL, action TEXT NOT NULL, from_state TEXT NOT NULL,
    to_state TEXT NOT NULL, who TEXT NOT NULL, why TEXT, event_time INTEGER, notify INTEGER NOT NULL,
    late INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS journal_alarm ON journal(alarm_id);
CREATE INDEX IF NOT EXISTS journal_site ON journal(site, at);
CREATE TABLE IF NOT EXISTS rule_state (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS device_state (device TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS msg_seen (
    device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, arrived INTEGER NOT NULL,
    PRIMARY KEY (device, boot, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS msg_seen_arrived ON msg_seen(arrived);
CREATE TABLE IF NOT EXISTS raw_latest (site TEXT PRIMARY KEY, topic_payload TEXT NOT NULL, arrived INTEGER NOT NULL);
