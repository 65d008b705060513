-- Jobs, their steps, every state transition, device setups, and local requests.
-- Written by cellctl.jobs; read by `cellctl jobs`.

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,          -- acceptance order: "oldest" in dispatch
    quantity INTEGER NOT NULL CHECK (quantity >= 1),
    priority INTEGER NOT NULL,
    due REAL,                             -- Unix seconds, or NULL
    source TEXT NOT NULL,                 -- "api", "hotfolder:<file>", "cli"
    spec TEXT NOT NULL,                   -- the submission as JSON (canonical)
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);

CREATE TABLE steps (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,                 -- unit * len(route) + position
    unit INTEGER NOT NULL,
    position INTEGER NOT NULL,
    process TEXT NOT NULL,
    program_kind TEXT NOT NULL,
    program_sha256 TEXT,                  -- content address of the program file
    program_file TEXT NOT NULL DEFAULT '',
    program_name TEXT NOT NULL DEFAULT '',
    program_parameters TEXT NOT NULL DEFAULT '{}',
    gcode TEXT,                           -- GcodeInfo as JSON for G-code programs
    setup TEXT NOT NULL DEFAULT '{}',     -- requirements
    reserves TEXT NOT NULL DEFAULT '[]',
    estimated_s REAL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    device TEXT,
    reserved TEXT NOT NULL DEFAULT '[]',  -- devices actually reserved by the last start
    pinned TEXT,                          -- held or resumed: the device it must (re)run on,
                                          -- kept from other work meanwhile
    attempt INTEGER NOT NULL DEFAULT 0,
    start_line INTEGER NOT NULL DEFAULT 0,
    last_acked_line INTEGER,
    ran_sha256 TEXT,                      -- the program this step ran (traceability)
    started REAL,
    ended REAL,
    PRIMARY KEY (job_id, idx)
);

CREATE INDEX steps_open ON steps (state) WHERE state NOT IN ('done', 'failed', 'cancelled');

CREATE TABLE transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER,                          -- NULL: a transition of the job itself
    from_state TEXT,                      -- NULL: accepted
    to_state TEXT NOT NULL,
    device TEXT,
    reason TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);

CREATE INDEX transitions_job ON transitions (job_id, id);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    setup TEXT NOT NULL,                  -- what is loaded, as JSON
    in_service INTEGER NOT NULL DEFAULT 1,
    note TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);

-- Requests written by the local CLI (cancel, answer a hold, set a setup …),
-- applied by the running daemon in order, each in the transaction of its effect.
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    done REAL,
    error TEXT
);

CREATE INDEX requests_pending ON requests (id) WHERE done IS NULL;
