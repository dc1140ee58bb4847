-- Per point, 1-minute and 1-hour rollups of the readings' values (good and
-- uncertain ones with a value; bad readings are not averaged into a trend):
-- count, sum (mean = sum / n), min, max. Kept by the writer in the same
-- transaction as the readings they summarise, so a rollup never disagrees
-- with the raw data it came from; a late reading updates only its buckets.
CREATE TABLE rollup_1m (
    point TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL, sum REAL NOT NULL,
    min REAL NOT NULL, max REAL NOT NULL, PRIMARY KEY (point, t)) WITHOUT ROWID;
CREATE TABLE rollup_1h (
    point TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL, sum REAL NOT NULL,
    min REAL NOT NULL, max REAL NOT NULL, PRIMARY KEY (point, t)) WITHOUT ROWID;
-- What was stored before rollups existed is rolled up once, here.
INSERT INTO rollup_1m (point, t, n, sum, min, max)
    SELECT point, t - t % 60000, count(*), sum(value), min(value), max(value)
    FROM readings WHERE value IS NOT NULL AND quality < 2 GROUP BY point, t - t % 60000;
INSERT INTO rollup_1h (point, t, n, sum, min, max)
    SELECT point, t - t % 3600000, sum(n), sum(sum), min(min), max(max)
    FROM rollup_1m GROUP BY point, t - t % 3600000;
