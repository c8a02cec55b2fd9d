"""minipipe: a systemd-native queue and runner for pipeline runs."""

__version__ = "0.1.0"
