"""Jobs: the job model and its state machines, durable storage, dispatch, pre-flight
checks, crash recovery and G-code metadata.

Modules:
    states     allowed transitions of jobs and steps
    spec       what a client submits (JobSpec), TOML job files
    records    stored jobs and steps as immutable snapshots
    repo       the SQL for them
    programs   content-addressed program files
    gcode      slicer metadata, extents and duration estimates of G-code
    dispatch   the dispatch decision behind the Dispatcher interface
    preflight  checks that hold a step before it moves anything
    policy     what a job's G-code may not do, per firmware
    content    bounded line reading, byte checks, escaping for operators
    recovery   what a restart does with unfinished steps
    api        the service's public types: errors, hold answers, device view
    requests   requests the local CLI queues in the store, applied by the daemon
    service    JobService: the async API and the running component
"""
