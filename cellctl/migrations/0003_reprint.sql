-- Reprints (issue 24): the same file printed again is a new job `<first id>-r<n>`.
ALTER TABLE jobs ADD COLUMN family TEXT;      -- a reprint: the first job's id; NULL: its own id
ALTER TABLE jobs ADD COLUMN drop_sig TEXT;    -- hot folder: the dropped file's size, mtime,
                                              -- ctime and inode, so that re-reading it after a
                                              -- crash before its delete is the same job

-- What a local request made (a job id for submit and reprint), for the CLI to show.
ALTER TABLE requests ADD COLUMN result TEXT;
