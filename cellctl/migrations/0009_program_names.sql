-- The names programs were uploaded under (put_program's `name`), so that the cell's
-- program store lists a program stored without a job by its file name (issue 30).
-- The store's files stay the truth: a row whose file is gone is not listed.
CREATE TABLE program_names (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user TEXT NOT NULL DEFAULT '',   -- who uploaded it last under this name
    ts REAL NOT NULL
);
