"""shardmq: a shard-per-core MQTT 5.0 / 3.1.1 broker for Python."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["Broker", "Config", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `shardmq --version` and the pure packages do not
    # pull in the worker.
    if name == "Broker":
        from .broker import Broker

        return Broker
    if name == "Config":
        from .config import Config

        return Config
    raise AttributeError(name)
