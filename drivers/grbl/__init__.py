"""grbl driver package (see the issue that builds it)."""
