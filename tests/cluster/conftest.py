"""Fixtures of the cluster tests: one real redis-server, and the nodes on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.nodes import Nodes
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Nodes]:
    made = Nodes(redis_server)
    yield made
    made.close()
