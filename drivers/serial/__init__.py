"""serial driver package (see the issue that builds it)."""
