"""``log_format`` and ``log_connections`` through ``shardmq serve`` as a
subprocess: every JSON line parses, connects and disconnects are logged with
their reason (or not at all with ``--no-log-connections``), the text format
is the default, and a bad format is one line and exit status 2."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from shardmq.logformat import JsonFormatter
from tests.helpers import Client, wait_for
from tests.storage.serve import ROOT, Serve, free_port

#: ISO 8601, UTC, milliseconds
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def brokers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for broker in started:
        broker.close()  # kills what a failed test left running


def serve(brokers: list[Serve], workers: int, *flags: str) -> Serve:
    broker = Serve([], workers, *flags)
    brokers.append(broker)
    return broker.start()


def records(text: str) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    lines = text.splitlines()
    assert lines
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def events(text: str, event: str, client_id: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if entry.get("event") == event and entry.get("client_id") == client_id:
            found.append(entry)
    return found


def test_json_lines_carry_connects_and_disconnects_with_reasons(brokers: list[Serve]) -> None:
    broker = serve(brokers, 2, "--log-format", "json")
    leaving = Client(broker.port, client_id="log-leaving")
    leaving.connect()
    leaving.disconnect()
    wait_for(lambda: events(broker.log_text(), "disconnect", "log-leaving"))
    staying = Client(broker.port, client_id="log-staying", version=4)
    staying.connect()
    assert broker.stop() == 0
    log = records(broker.log_text())

    for entry in log:
        assert TIME.fullmatch(entry["time"]), entry
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
        assert isinstance(entry["logger"], str) and isinstance(entry["message"], str)
        assert not entry["message"].startswith("[w")  # the worker is a field, not a prefix
    supervisor = [e for e in log if e["logger"] == "shardmq.supervisor"]
    assert supervisor and all(e["worker"] is None for e in supervisor)

    (connect,) = [e for e in log if e.get("event") == "connect" and e["client_id"] == "log-leaving"]
    assert connect["level"] == "info" and connect["logger"] == "shardmq.connection"
    assert connect["worker"] in (0, 1)
    assert connect["protocol_version"] == "5"
    assert connect["clean_start"] is True and connect["keep_alive"] == 60
    assert connect["remote_address"].startswith("127.0.0.1:")
    assert "log-leaving" in connect["message"]
    (gone,) = events(broker.log_text(), "disconnect", "log-leaving")
    assert gone["reason"] == "client DISCONNECT 0x00 SUCCESS"
    assert gone["worker"] == connect["worker"]

    (v311,) = events(broker.log_text(), "connect", "log-staying")
    assert v311["protocol_version"] == "3.1.1"
    (stopped,) = events(broker.log_text(), "disconnect", "log-staying")
    assert stopped["reason"] == "server shutting down"


def test_keep_alive_timeout_is_the_reason(brokers: list[Serve]) -> None:
    broker = serve(brokers, 1, "--log-format", "json")
    silent = Client(broker.port, client_id="log-silent", keepalive=1)
    silent.connect()
    silent.paho.loop_stop()  # no more PINGREQs: timed out after 1.5 s
    (gone,) = wait_for(lambda: events(broker.log_text(), "disconnect", "log-silent"))
    assert gone["reason"] == "keep-alive timeout"
    assert gone["worker"] is None  # the single-process broker has no worker process
    silent.drop()
    assert broker.stop() == 0
    records(broker.log_text())


def test_no_log_connections_logs_neither(brokers: list[Serve]) -> None:
    broker = serve(brokers, 1, "--log-format", "json", "--no-log-connections")
    client = Client(broker.port, client_id="log-quiet")
    client.connect()  # the connect line would be written before this CONNACK
    client.disconnect()
    assert broker.stop() == 0
    log = records(broker.log_text())
    assert not [e for e in log if e.get("event") in ("connect", "disconnect")]
    assert not [e for e in log if "log-quiet" in e["message"]]


def test_text_is_the_default(brokers: list[Serve]) -> None:
    broker = serve(brokers, 1)
    client = Client(broker.port, client_id="log-text")
    client.connect()
    client.disconnect()
    wait_for(lambda: "client log-text disconnected" in broker.log_text())
    assert broker.stop() == 0
    lines = broker.log_text().splitlines()
    line = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) +\[\d+\] [\w.]+: .*")
    assert lines and all(line.fullmatch(text) for text in lines), lines
    for text in lines:
        with pytest.raises(ValueError):
            json.loads(text)
    connected = "client log-text connected from 127.0.0.1:"
    assert any(" INFO     " in t and connected in t for t in lines)
    assert any("client log-text disconnected: client DISCONNECT 0x00" in t for t in lines)


def test_bad_log_format_is_one_line_and_status_2() -> None:
    argv = [sys.executable, "-m", "shardmq", "serve", "--port", str(free_port())]
    result = subprocess.run(
        [*argv, "--log-format", "xml"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "log_format" in line and "'xml'" in line


def test_json_formatter_puts_exceptions_in_exc() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "shardmq.test", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    record.client_id = "c"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed x" and entry["level"] == "error"
    assert entry["client_id"] == "c" and entry["worker"] is None and "event" not in entry
    assert "RuntimeError: boom" in entry["exc"] and TIME.fullmatch(entry["time"])
