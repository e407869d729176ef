"""The cross-shard fabric: one interface (fabric.py), a Unix-socket
implementation for the workers of one host (local.py), pure message and
interest tables (messages.py, interest.py)."""
