-- Bed clearing as a gate (issue 20): a printer listed in [scheduler] bed_clearing that
-- ended a print with no unload step after it takes no new step until an operator
-- confirms its bed clear. Written in the transaction of the step's end.
CREATE TABLE bed_uncleared (
    device_id TEXT PRIMARY KEY,
    step_key TEXT NOT NULL,   -- the step whose part is on the bed
    since REAL NOT NULL
);
