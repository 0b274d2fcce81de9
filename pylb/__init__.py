"""pylb: a pure-Python HAProxy + Keepalived replacement for OpenStack proxy nodes."""

__version__ = "0.1.0"
