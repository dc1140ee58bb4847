-- The export feed: what each commit made durable (its new readings and alarm
-- transitions), one row per commit, written in the same transaction when an
-- export sink (InfluxDB) is configured and deleted once the sink has
-- delivered it. The sink's durable cursor is the oldest row still here: an
-- outage of the sink's server loses nothing, a restart resumes from it, and
-- rows leave in commit order. `readings` is the row's reading count (points
-- pending without reading the bodies). AUTOINCREMENT: a plain rowid would
-- start again at 1 once the sink had emptied the table, behind its cursor.
CREATE TABLE feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, committed INTEGER NOT NULL, readings INTEGER NOT NULL,
    transitions INTEGER NOT NULL, body BLOB NOT NULL);
