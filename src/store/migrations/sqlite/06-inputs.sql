-- Every input as received, for export and replay: source 0 = MQTT (topic,
-- exact payload bytes), 1 = Modbus poll (body: the poll's blocks as JSON),
-- 2 = Modbus poll failure (body: the error).
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY, arrived INTEGER NOT NULL, site TEXT, source INTEGER NOT NULL,
    topic TEXT, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS inputs_arrived ON inputs(arrived);
