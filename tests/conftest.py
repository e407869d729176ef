from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import BrokerThread, Client, RawClient
from tests.redis_server import RedisClusterServer


@pytest.fixture(scope="session")
def shared_redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterServer]:
    """One Redis Cluster of three primaries for the whole run (``redis_for``
    empties it for each test)."""
    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test run against a Redis Cluster runs in MQTT 5 only: what reaches
    Redis does not depend on the protocol version (both versions run against
    one redis-server)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("version") == 4 and "redis-cluster" in params.values():
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def make_broker() -> Iterator[Callable[..., BrokerThread]]:
    """Start brokers with custom settings; hooks may be registered through ``setup``."""
    started: list[BrokerThread] = []

    def factory(setup: Callable[[Any], None] | None = None, **settings: Any) -> BrokerThread:
        bt = BrokerThread(**settings)
        if setup is not None:
            setup(bt.broker)
        bt.start()
        started.append(bt)
        return bt

    yield factory
    for bt in started:
        bt.stop()


@pytest.fixture
def broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """Create paho clients that are disconnected at the end of the test."""
    made: list[Client] = []

    def factory(port: int, **kwargs: Any) -> Client:
        c = Client(port, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        try:
            c.paho.disconnect()
        except Exception:
            pass
        c.paho.loop_stop()


@pytest.fixture(params=[5, 4], ids=["v5", "v311"])
def version(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def raw_clients() -> Iterator[Callable[..., RawClient]]:
    """Raw socket clients, closed at the end of the test."""
    made: list[RawClient] = []

    def factory(port: int, version: int = 5) -> RawClient:
        raw = RawClient(port, version)
        made.append(raw)
        return raw

    yield factory
    for raw in made:
        raw.close()
