"""Built-in cellctl drivers, installed as the package `cellctl_drivers`."""
