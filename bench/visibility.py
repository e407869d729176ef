"""How soon a new subscription is seen by the other workers.

    python -m bench.visibility --workers 2 [--trials 50] [--busy]

Starts ``shardmq serve --workers N`` on a free port, puts a subscriber and a
publisher on different workers, and measures, per trial:

- ``window``: from the moment the subscriber sends SUBSCRIBE until the send
  time of the first message (published every 100 us on the other worker)
  that reaches it; what was published earlier is what a client that does not
  wait for its SUBACK would miss;
- ``suback``: from SUBSCRIBE to SUBACK (the SUBACK waits until every worker
  has applied the subscription).

``--busy`` adds a flood of QoS 0 publishes through the subscriber's own
worker, so its loop iterations are long. One JSON line on stdout with the
percentiles in microseconds. The specification promises delivery only after
SUBACK; this measures what happens before it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import Connack, Connect, Publish, Suback, Subscribe, Subscription

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def where(broker: Any) -> None:
    """The app the measured broker runs: reports each client's worker."""

    @broker.on_connect
    async def report(client: Any, packet: Any) -> bool:
        client.broker.publish(f"where/{client.client_id}", str(client.worker_id).encode())
        return True


class Raw:
    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder(server=False, version=5)
        self.pending: list[Any] = []
        self.sock.sendall(encode(Connect(client_id, keep_alive=0), 5))
        assert isinstance(self.next(), Connack)

    def next(self) -> Any:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_of(watcher: Raw, client_id: str) -> int:
    while True:
        pkt = watcher.next()
        if isinstance(pkt, Publish) and pkt.topic == f"where/{client_id}":
            return int(pkt.payload)


def _pct(values: list[float], q: float) -> int:
    ordered = sorted(values)
    return int(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def run_flood(port: int, client_id: str) -> None:
    """Publish QoS 0 to a topic nobody subscribes to, as fast as possible."""
    conn = Raw(port, client_id)
    chunk = encode(Publish("vis/flood", b"f" * 16), 5) * 2000
    while True:
        conn.sock.sendall(chunk)


def main() -> None:
    if sys.argv[1:2] == ["--flood"]:
        run_flood(int(sys.argv[2]), sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--busy", action="store_true")
    args = ap.parse_args()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardmq", "serve", "--host", "127.0.0.1", "--port", str(port)]
        + [
            "--workers",
            str(args.workers),
            "--app",
            "bench.visibility:where",
            "--sys-interval",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        watcher = Raw(port, "watcher")
        watcher.sock.sendall(encode(Subscribe(1, [Subscription("where/#", 0)]), 5))
        while not isinstance(watcher.next(), Suback):
            pass
        windows: list[float] = []
        subacks: list[float] = []
        missed = 0
        for trial in range(args.trials):
            sub_id = f"vis-sub-{trial}"
            sub = Raw(port, sub_id)
            home = _worker_of(watcher, sub_id)
            n = 0
            while True:
                n += 1
                pub_id = f"vis-pub-{trial}-{n}"
                pub = Raw(port, pub_id)
                if _worker_of(watcher, pub_id) != home or args.workers == 1:
                    break
                pub.sock.close()
            flood: subprocess.Popen[bytes] | None = None
            stop = threading.Event()
            if args.busy:
                # another process, so the flood does not compete for this one's GIL
                n = 0
                while True:
                    n += 1
                    flood_id = f"vis-flood-{trial}-{n}"
                    flood = subprocess.Popen(
                        [sys.executable, "-m", "bench.visibility", "--flood", str(port), flood_id],
                        env=env,
                    )
                    if _worker_of(watcher, flood_id) == home:
                        break
                    flood.kill()
                    flood.wait()
                time.sleep(0.2)
            topic = f"vis/t/{trial}"

            def probing(
                sock: socket.socket = pub.sock, topic: str = topic, stop: threading.Event = stop
            ) -> None:
                while not stop.is_set():
                    sock.sendall(encode(Publish(topic, str(time.monotonic_ns()).encode()), 5))
                    time.sleep(0.0001)

            prober = threading.Thread(target=probing, daemon=True)
            prober.start()
            time.sleep(0.05)
            t0 = time.monotonic_ns()
            sub.sock.sendall(encode(Subscribe(1, [Subscription(topic, 0)]), 5))
            first = None
            suback_at = None
            sub.sock.settimeout(5)
            try:
                while first is None or suback_at is None:
                    pkt = sub.next()
                    if isinstance(pkt, Suback):
                        suback_at = time.monotonic_ns()
                    elif isinstance(pkt, Publish) and first is None:
                        first = int(pkt.payload)
            except TimeoutError:
                missed += 1
            stop.set()
            prober.join()
            if first is not None and suback_at is not None:
                windows.append(max(0, first - t0) / 1000)
                subacks.append((suback_at - t0) / 1000)
            sub.sock.close()
            pub.sock.close()
            if flood is not None:
                flood.kill()
                flood.wait()
        if not windows:
            raise SystemExit(f"no trial completed ({missed} missed)")
        out = {
            "workers": args.workers,
            "busy": args.busy,
            "trials": len(windows),
            "missed": missed,
            "window_us": {
                "p50": _pct(windows, 0.5),
                "p90": _pct(windows, 0.9),
                "max": int(max(windows)),
                "mean": int(statistics.mean(windows)),
            },
            "suback_us": {"p50": _pct(subacks, 0.5), "p90": _pct(subacks, 0.9)},
        }
        print(json.dumps(out))
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    main()
