"""MQTT telemetry: topic names, encodings, the spool, the publisher and the link.

Drivers never see any of this: they emit typed events into the app's bus, and
the publisher turns them into MQTT messages through an `Encoding` (JSON today;
Sparkplug B plugs in as a second one).
"""
