"""Marlin 3D printers over serial: `driver.MarlinDriver` and its simulator `sim.MarlinSim`.

See docs/marlin.md. `gcode` holds framing and parsing helpers, `feed` reads job
files from disk line by line, `samples` writes G-code files for tests and demos.
"""
