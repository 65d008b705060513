-- Learned durations (issue 21): every changeover the cell measured (from its request,
-- or the device becoming free if later, to the operator's confirmation; or the
-- automatic change through the driver) and every step's actual run, so that the
-- planner's estimates improve with each job (cellctl/jobs/learning.py).
CREATE TABLE measured (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('changeover', 'step')),
    device TEXT NOT NULL,
    from_setup TEXT NOT NULL DEFAULT '',  -- changeover: the changed keys before (a setup label)
    to_setup TEXT NOT NULL DEFAULT '',    -- … and after
    automatic INTEGER NOT NULL DEFAULT 0,
    step_key TEXT,                        -- the step (kind step), or the one it was for
    estimated_s REAL,                     -- step: its estimate (slicer or job), if any
    seconds REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX measured_at ON measured (at);
