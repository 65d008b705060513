"""Numbered SQL migrations, applied in order by cellctl.store."""
