"""`cellctl panel`: an HTTP front end of the cell, a client of it over MQTT like the CLI.

It serves the part of OctoPrint's API that slicers use to "send to printer"
(docs/panel.md) and talks to the cell only through MQTT commands, as the user
whose API key it verified (`on_behalf_of`, permission `frontend`). The daemon
neither loads nor imports any of it.

It also serves the operator page (cellctl.panel.ui, static/): users sign in
with their broker credentials and act over their own MQTT connection.
"""
