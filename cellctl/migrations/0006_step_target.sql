-- A step sent to one device (`device` in a job step, the panel's /device/<id>/ URL, issue 29):
-- only that device may run it. NULL: any capable device.
ALTER TABLE steps ADD COLUMN target TEXT;
