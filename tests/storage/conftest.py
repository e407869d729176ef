from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.storage.serve import Serve


@pytest.fixture
def brokers() -> Iterator[list[Serve]]:
    """`shardmq serve` subprocesses, killed (every process) at the end."""
    made: list[Serve] = []
    yield made
    for b in made:
        b.close()
