"""Sparkplug B 3.0: the cell as an edge node, beside the JSON namespace (docs/sparkplug.md).

`settings` holds the `[mqtt.sparkplug]` config model (imported by cellctl.config, so it
imports nothing of cellctl); `payload` the datatypes and protobuf building; `catalog`
what metrics each device has; `session` the edge node's rules (seq, bdSeq, aliases,
births and deaths); `service` the second MQTT connection that runs them.
"""
