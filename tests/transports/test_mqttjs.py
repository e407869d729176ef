"""MQTT.js (npm ``mqtt``, the browser and Node client) over WebSocket.

``scripts/test`` installs it into tests/transports/js/node_modules when node
is present; without node (or the module) the test is skipped and says why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import BrokerThread

from .helpers import listener_port

JS = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")


@pytest.mark.parametrize("protocol_version", [5, 4], ids=["v5", "v311"])
def test_mqttjs_round_trip_over_ws(
    make_broker: Callable[..., BrokerThread], protocol_version: int
) -> None:
    if NODE is None:
        pytest.skip("node is not installed: the MQTT.js interop test needs Node.js")
    if not (JS / "node_modules" / "mqtt").is_dir():
        pytest.skip("MQTT.js missing: npm install --no-save --prefix tests/transports/js mqtt@5")
    bt = make_broker(ws_port=0)
    url = f"ws://127.0.0.1:{listener_port(bt)}/mqtt"
    result = subprocess.run(
        [NODE, str(JS / "mqttjs_roundtrip.js"), url, str(protocol_version)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"topic": "js/t", "payload": "from mqtt.js", "qos": 1}
