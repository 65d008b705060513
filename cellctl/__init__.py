"""cellctl: a controller for a microfactory cell."""

__version__ = "0.1.0"
