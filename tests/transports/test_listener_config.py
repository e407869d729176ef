"""Listener settings: the TOML array of tables, the shortcuts, errors naming the field,
and SIGHUP through the real command."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardmq.config import Listener, effective_listeners, load_config
from shardmq.errors import ConfigError
from tests.helpers import WAIT, BrokerThread

from .conftest import PKI
from .helpers import listener_port, read_all

README = Path(__file__).resolve().parents[2] / "README.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardmq.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_readme_listeners_example_loads(tmp_path: Path, pki: PKI) -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```toml\n(certfile = .*?)```", text, re.S)
    assert block is not None
    toml = (
        block.group(1)
        .replace("/etc/shardmq/server.pem", pki.certfile)
        .replace("/etc/shardmq/server.key", pki.keyfile)
        .replace("/etc/shardmq/clients-ca.pem", pki.cafile)
    )
    config = load_config(config_file=write(tmp_path, toml), env={})
    kinds = [(label, lst.type, lst.port) for label, lst in effective_listeners(config)]
    assert kinds == [
        ("listeners[0]", "tls", 8883),
        ("listeners[1]", "wss", 443),
        ("listeners[2]", "tcp", 1884),
    ]
    tls, wss, tcp = (lst for _, lst in effective_listeners(config))
    assert tls.require_client_cert and tls.cafile == pki.cafile
    assert wss.certfile == pki.certfile and wss.allowed_origins == ("https://app.example.com",)
    assert wss.host == "0.0.0.0"
    assert tcp.proxy_protocol


def test_shortcuts_come_after_the_table_and_use_the_top_level_files(pki: PKI) -> None:
    config = load_config(
        {"tls_port": 8883, "wss_port": 8443, "certfile": pki.certfile, "host": "127.0.0.1"},
        env={"SHARDMQ_LISTENERS": '[{type = "ws", port = 8080, path = "/ws"}]'},
    )
    assert [(label, lst.type) for label, lst in effective_listeners(config)] == [
        ("listeners[0]", "ws"),
        ("tls_port", "tls"),
        ("wss_port", "wss"),
    ]
    assert all(lst.host == "127.0.0.1" for _, lst in effective_listeners(config))
    assert config.listeners == (Listener("ws", 8080, path="/ws"),)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[listeners]]\ntype = "tls"\nport = 8883\ncertfile = "/nope.pem"\n',
            r"listeners\[0\]\.certfile: file not found",
        ),
        ('[[listeners]]\ntype = "wss"\nport = 1\n', r"listeners\[0\]\.certfile: required"),
        ('[[listeners]]\ntype = "quic"\nport = 1\n', r"listeners\[0\]\.type: must be one of"),
        ('[[listeners]]\ntype = "ws"\nport = 70000\n', r"listeners\[0\]\.port: must be between"),
        ('[[listeners]]\ntype = "ws"\nport = "80"\n', r"listeners\[0\]\.port: expected an integer"),
        ('[[listeners]]\ntype = "ws"\n', r"listeners\[0\]\.port: missing"),
        (
            '[[listeners]]\ntype = "ws"\nport = 1\npath = "mqtt"\n',
            r"listeners\[0\]\.path: must start",
        ),
        (
            '[[listeners]]\ntype = "ws"\nport = 1\nproxy = true\n',
            r"listeners\[0\]\.proxy: unknown listener setting",
        ),
        (
            '[[listeners]]\ntype = "ws"\nport = 1\nallowed_origins = "x"\n',
            r"listeners\[0\]\.allowed_origins: ",
        ),
        (
            '[[listeners]]\ntype = "tcp"\nport = 1\n'
            '[[listeners]]\ntype = "ws"\nport = 1\nproxy_protocol = 1\n',
            r"listeners\[1\]\.proxy_protocol: expected a boolean",
        ),
        ("listeners = 3\n", r"^listeners: expected an array"),
    ],
)
def test_bad_listener_settings_name_the_field(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config_file=write(tmp_path, toml), env={})
    assert "\n" not in str(info.value)


def test_bad_listeners_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^listeners: .*\(from SHARDMQ_LISTENERS\)"):
        load_config(env={"SHARDMQ_LISTENERS": "[{type = "})


def test_a_missing_certfile_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^certfile: file not found.*\(from --certfile\)"):
        load_config({"tls_port": 8883, "certfile": "/nope.pem"}, env={})


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardmq", "serve", "--tls-port", "0"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "SHARDMQ_CONFIG": ""},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "shardmq: error: certfile: required by tls_port\n"


def test_sighup_reloads_certificates_in_the_running_command(tmp_path: Path, pki: PKI) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shardmq",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            "0",
            "--certfile",
            pki.certfile,
            "--keyfile",
            pki.keyfile,
            "--sys-interval",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SHARDMQ_CONFIG": "", "SHARDMQ_WORKERS": "1"},
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 15
        while not any("shardmq listening" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGHUP)
        while not any("TLS certificates reloaded" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
        assert proc.poll() is None  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("kind", ["tls", "ws", "proxy"])
def test_a_connection_that_never_finishes_its_opening_is_closed(
    make_broker: Callable[..., BrokerThread],
    pki: PKI,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    listener: dict[str, object] = {"type": "tcp" if kind == "proxy" else kind, "port": 0}
    if kind == "tls":
        listener.update(certfile=pki.certfile, keyfile=pki.keyfile)
    listener["proxy_protocol"] = kind == "proxy"
    bt = make_broker(listeners=[listener], connect_timeout=0.2)
    with (
        caplog.at_level(logging.INFO, logger="shardmq.listener"),
        socket.create_connection(("127.0.0.1", listener_port(bt)), timeout=WAIT) as sock,
    ):
        sock.sendall(b"G" if kind == "ws" else b"P" if kind == "proxy" else b"\x16")
        assert read_all(sock) == b""
    assert any("opening not done in time" in r.getMessage() for r in caplog.records)
