-- Sparkplug B store and forward (docs/sparkplug.md): metric changes made while the
-- edge node was not born (primary host offline, broker unreachable), kept across
-- restarts and sent after the next births as historical DATA, in id order.
CREATE TABLE sparkplug_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT,               -- NULL: a node metric
    name TEXT NOT NULL,
    value TEXT NOT NULL,       -- JSON: bool, number, string or null
    ts_ms INTEGER NOT NULL,
    quality TEXT NOT NULL
);
