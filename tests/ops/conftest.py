"""The 2-worker broker with a metrics port that test_metrics.py and
test_stats.py share (one per module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ops.test_metrics import MetricsServe, get, wait_for


@pytest.fixture(scope="module")
def broker() -> Iterator[MetricsServe]:
    serve = MetricsServe(2)
    serve.start()
    try:
        wait_for(lambda: get(serve.metrics_port, "/readyz")[0] == 200, "/readyz 200")
        yield serve
    finally:
        serve.close()
