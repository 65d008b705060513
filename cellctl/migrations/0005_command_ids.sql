-- Idempotent commands (issue 23): the first reply to a state-changing command that
-- carried an `id`, per user, so that a replay within the retention gets it again
-- and nothing is done twice. Emergency stops are never kept here.
CREATE TABLE command_ids (
    user TEXT NOT NULL,
    request_id TEXT NOT NULL,
    command TEXT NOT NULL,
    ts REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    result TEXT,                      -- the reply's `result`, as JSON
    PRIMARY KEY (user, request_id)
) WITHOUT ROWID;
CREATE INDEX command_ids_ts ON command_ids (ts);
