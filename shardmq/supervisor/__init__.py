"""Process lifecycle: listening sockets, worker processes, signals.

The supervisor forks the workers and restarts them; it never touches MQTT.
See ``arbiter`` for the theory of operation.
"""

from __future__ import annotations

from .arbiter import (
    EXIT_BOOT,
    EXIT_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    Supervisor,
    WorkerContext,
    describe_exit,
    resolve_workers,
)
from .sockets import listening_sockets

__all__ = [
    "EXIT_BOOT",
    "EXIT_CONFIG",
    "EXIT_CRASH",
    "EXIT_OK",
    "Supervisor",
    "WorkerContext",
    "describe_exit",
    "listening_sockets",
    "resolve_workers",
]
