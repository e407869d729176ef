"""Fixtures of the cluster tests: one real redis-server (or Redis Cluster), and
the nodes on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.nodes import Nodes
from tests.redis_server import RedisServer, redis_for


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server, or (a test marked ``both_kinds``) a Redis Cluster too."""
    yield from redis_for(request, tmp_path)


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Nodes]:
    made = Nodes(redis_server)
    yield made
    made.close()
