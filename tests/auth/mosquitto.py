"""A real mosquitto broker on a free loopback port, and its command-line tools.

For the interop tests: they skip when the binaries are missing (Debian
packages mosquitto and mosquitto-clients; scripts/test installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

#: Seconds anything here may take before the test fails.
DEADLINE = 10.0


def tool(name: str) -> str | None:
    """The path of a mosquitto binary; /usr/sbin is often not on PATH."""
    for directory in ("/usr/sbin", "/usr/bin"):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """``mosquitto -c <generated config>``, listening on 127.0.0.1 only."""

    def __init__(self, directory: Path, *lines: str) -> None:
        exe = tool("mosquitto")
        assert exe is not None, "mosquitto is not installed"
        self.exe = exe
        self.directory = directory
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        # Started as root, mosquitto drops to the "mosquitto" user, which cannot
        # read a test's private files; "user root" keeps it as it was started.
        privileges = ["user root"] if os.geteuid() == 0 else []
        self.config.write_text(
            "\n".join([f"listener {self.port} 127.0.0.1", *privileges, *lines, ""]),
            encoding="utf-8",
        )
        self.log = directory / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.config), "-v"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(
                        "mosquitto did not start: " + self.log.read_text(errors="replace")
                    ) from None
                time.sleep(0.02)  # polling for the port, not timing an assertion

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(DEADLINE)
            self.proc = None


def publish_reason_codes(
    port: int, username: str | None, password: str | None, client_id: str, topics: list[str]
) -> list[int]:
    """Publish once at QoS 1 (MQTT 5) to each topic; the PUBACK reason codes.

    mosquitto answers a publish its ACL refuses with 0x87 Not authorized, an
    allowed one with 0x00 or 0x10 No matching subscribers: a direct answer,
    no waiting for something not to arrive.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    codes: dict[int, int] = {}
    done = threading.Event()
    connected = threading.Event()
    results: dict[str, Any] = {}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        results["connack"] = reason.value
        connected.set()

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        codes[mid] = reason.value
        if len(codes) == len(topics):
            done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(DEADLINE), "no CONNACK"
        assert results["connack"] == 0, f"refused: {results['connack']:#x}"
        mids = [client.publish(topic, b"x", qos=1).mid for topic in topics]
        if topics:
            assert done.wait(DEADLINE), "missing PUBACKs"
        return [codes[mid] for mid in mids]
    finally:
        client.disconnect()
        client.loop_stop()
