"""The admin API on the metrics port and `shardmq ctl`, against
`shardmq serve --workers 2` with paho clients spread over both workers:
every route, every ctl command, and refusal without the token."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import Publish, Suback, Subscribe, Subscription
from tests.helpers import Client
from tests.ops.test_metrics import MetricsServe, get, wait_for
from tests.storage.serve import ROOT, Raw

TOKEN = "s3cret-admin-token"


class AdminServe(MetricsServe):
    def __init__(self, config: Path) -> None:
        super().__init__(2)
        self.extra += ["--config", str(config)]


@pytest.fixture(scope="module")
def admin_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServe]:
    config = tmp_path_factory.mktemp("admin") / "shardmq.toml"
    config.write_text(f'admin_token = "{TOKEN}"\n')
    serve = AdminServe(config)
    serve.start()
    try:
        wait_for(lambda: get(serve.metrics_port, "/readyz")[0] == 200, "/readyz 200")
        yield serve
    finally:
        serve.close()


def call(
    broker: MetricsServe,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = TOKEN,
) -> tuple[int, Any]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(
        f"http://127.0.0.1:{broker.metrics_port}{path}", data=data, method=method
    )
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, _decoded(resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decoded(exc.headers, exc.read())


def _decoded(headers: Any, body: bytes) -> Any:
    """The JSON the admin routes answer with (the other routes answer text)."""
    if headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(body)
    return body.decode()


def ctl(
    broker: MetricsServe, *args: str, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "shardmq",
        "ctl",
        "--url",
        f"http://127.0.0.1:{broker.metrics_port}",
    ]
    if token is not None:
        argv += ["--token", token]
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [*argv, *args], cwd=ROOT, capture_output=True, text=True, timeout=30, env=env
    )


def on_both_workers(broker: MetricsServe, prefix: str, most: int = 64) -> list[Client]:
    """Connect clients ``<prefix>-<n>`` until both workers hold at least one
    (where a connection lands is the kernel's choice)."""
    clients: list[Client] = []
    while len(clients) < most:
        client = Client(broker.port, f"{prefix}-{len(clients):02d}")
        client.connect()
        clients.append(client)
        if len(clients) >= 4:
            _status, answer = call(broker, "GET", f"/api/v1/clients?prefix={prefix}-&limit=1000")
            if {row["worker"] for row in answer["data"]} == {0, 1}:
                return clients
    raise AssertionError(f"{most} connections all landed on one worker")


# -- the token ---------------------------------------------------------------------


def test_admin_routes_refuse_a_missing_or_wrong_token(admin_broker: AdminServe) -> None:
    for path in ("/api/v1/clients", "/api/v1/retained", "/api/v1/subscriptions?topic=a"):
        assert call(admin_broker, "GET", path, token=None)[0] == 401
        assert call(admin_broker, "GET", path, token="wrong")[0] == 401
        assert call(admin_broker, "GET", path)[0] == 200
    status, answer = call(admin_broker, "POST", "/api/v1/publish", {"topic": "x"}, token="nope")
    assert status == 401 and "token" in answer["error"]
    status, _ = call(admin_broker, "DELETE", "/api/v1/clients/anyone", token=None)
    assert status == 401
    # the other routes need no token
    assert get(admin_broker.metrics_port, "/healthz")[0] == 200
    # ctl: one line, exit status 1
    done = ctl(admin_broker, "clients", token="wrong")
    assert done.returncode == 1
    assert done.stderr.startswith("shardmq ctl: error: 401") and done.stderr.count("\n") == 1
    done = ctl(admin_broker, "clients", token=None)
    assert done.returncode == 1 and "SHARDMQ_ADMIN_TOKEN" in done.stderr


def test_admin_routes_are_off_without_admin_token(broker: MetricsServe) -> None:
    # the shared 2-worker broker of conftest.py has no admin_token
    status, answer = call(broker, "GET", "/api/v1/clients")
    assert status == 404 and "admin_token" in answer["error"]
    assert call(broker, "GET", "/api/v1/clients", token="")[0] == 404


# -- clients ---------------------------------------------------------------------------


def test_clients_are_listed_from_both_workers_paged_and_filtered(admin_broker: AdminServe) -> None:
    clients = on_both_workers(admin_broker, "list")
    named = Client(admin_broker.port, "named-1", version=4, username="alice")
    named.connect()
    try:
        status, answer = call(admin_broker, "GET", "/api/v1/clients?prefix=list-&limit=1000")
        assert status == 200
        rows = answer["data"]
        assert [r["client_id"] for r in rows] == sorted(c.client_id for c in clients)
        assert all(r["connected"] and r["protocol"] == "5.0" for r in rows)
        assert all(r["peer"].startswith("127.0.0.1:") for r in rows)
        assert {r["worker"] for r in rows} == {0, 1}

        # pages of 3 cover every client exactly once, in order
        seen: list[str] = []
        page = 1
        while True:
            _s, answer = call(
                admin_broker, "GET", f"/api/v1/clients?prefix=list-&limit=3&page={page}"
            )
            assert answer["meta"]["count"] == len(clients)
            assert len(answer["data"]) <= 3
            seen += [r["client_id"] for r in answer["data"]]
            if not answer["meta"]["hasnext"]:
                break
            page += 1
        assert seen == sorted(c.client_id for c in clients)

        _s, answer = call(admin_broker, "GET", "/api/v1/clients?username=alice")
        assert [(r["client_id"], r["protocol"]) for r in answer["data"]] == [("named-1", "3.1.1")]
        assert call(admin_broker, "GET", "/api/v1/clients?limit=0")[0] == 400
        assert call(admin_broker, "GET", "/api/v1/clients?page=x")[0] == 400

        done = ctl(admin_broker, "clients", "--prefix", "list-")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split()[:3] == ["CLIENT_ID", "CONNECTED", "USERNAME"]
        assert [line.split()[0] for line in lines[1:-1]] == sorted(c.client_id for c in clients)
        assert lines[-1] == f"{len(clients)} in all"
        done = ctl(admin_broker, "clients", "--username", "alice", "--json")
        assert json.loads(done.stdout)["data"][0]["client_id"] == "named-1"
    finally:
        for client in clients:
            client.disconnect()
        named.disconnect()


def test_client_detail_shows_subscriptions_queue_and_inflight(admin_broker: AdminServe) -> None:
    sub = Client(admin_broker.port, "detail-sub", clean_start=False, session_expiry=300)
    sub.connect()
    sub.subscribe("adm/detail/#", 1, no_local=True, sub_id=7)
    sub.subscribe("$share/g1/adm/detail/shared", 0)
    sub.disconnect()
    wait_for(
        lambda: call(admin_broker, "GET", "/api/v1/clients/detail-sub")[1]["connected"] is False,
        "detail-sub offline",
    )
    # a raw client that never acknowledges: its QoS 1 delivery stays in flight
    raw = Raw(admin_broker.port)
    raw.connect("detail-raw", clean=True)
    raw.send(Subscribe(1, [Subscription("adm/detail/#", 1)]))
    assert isinstance(raw.recv(), Suback)
    pub = Client(admin_broker.port, "detail-pub")
    pub.connect()
    try:
        for i in range(3):
            pub.publish("adm/detail/x", f"m{i}", qos=1)
        assert isinstance(raw.recv(), Publish)  # not acknowledged
        wait_for(
            lambda: call(admin_broker, "GET", "/api/v1/clients/detail-sub")[1]["queued"] == 3,
            "3 queued",
        )
        status, detail = call(admin_broker, "GET", "/api/v1/clients/detail-sub")
        assert status == 200
        assert detail["connected"] is False and detail["session_expiry_interval"] == 300
        assert detail["worker"] in (0, 1) and "node" not in detail
        subs = {s["topic_filter"]: s for s in detail["subscriptions"]}
        assert set(subs) == {"adm/detail/#", "$share/g1/adm/detail/shared"}
        assert subs["adm/detail/#"]["qos"] == 1 and subs["adm/detail/#"]["no_local"] is True
        assert subs["adm/detail/#"]["identifier"] == 7
        assert subs["$share/g1/adm/detail/shared"]["share_group"] == "g1"

        wait_for(
            lambda: call(admin_broker, "GET", "/api/v1/clients/detail-raw")[1]["inflight"] == 3,
            "3 in flight",
        )
        _s, raw_detail = call(admin_broker, "GET", "/api/v1/clients/detail-raw")
        assert raw_detail["connected"] is True and raw_detail["queued"] == 0

        assert call(admin_broker, "GET", "/api/v1/clients/nobody-here")[0] == 404
        done = ctl(admin_broker, "clients", "detail-sub")
        assert done.returncode == 0, done.stderr
        assert "queued: 3" in done.stdout.splitlines()
        assert "adm/detail/#" in done.stdout
    finally:
        pub.disconnect()
        raw.close()
        call(admin_broker, "DELETE", "/api/v1/clients/detail-sub?discard=true")


# -- kick ----------------------------------------------------------------------------------


def test_kick_sends_0x98_and_keeps_the_session_unless_discarded(admin_broker: AdminServe) -> None:
    clients = on_both_workers(admin_broker, "kick")
    first: dict[int, str] = {}
    try:
        for client in clients:
            client.subscribe("adm/kick/t", 1)
        # a persistent session on each worker: kicked, it stays
        rows = call(admin_broker, "GET", "/api/v1/clients?prefix=kick-&limit=1000")[1]["data"]
        first = {r["worker"]: r["client_id"] for r in rows}
        for worker, cid in sorted(first.items()):
            victim = next(c for c in clients if c.client_id == cid)
            status, answer = call(admin_broker, "DELETE", f"/api/v1/clients/{cid}")
            assert status == 200 and answer == {"client_id": cid, "result": "kicked"}, worker
            rc, _props = victim.wait_disconnect()
            assert rc.value == ReasonCode.ADMINISTRATIVE_ACTION
            victim.paho.loop_stop()
        # kicked clients had clean start, so their sessions end with the connection
        for cid in first.values():
            wait_for(
                lambda cid=cid: call(admin_broker, "GET", f"/api/v1/clients/{cid}")[0] == 404,
                f"{cid} gone",
            )
    finally:
        for client in clients:
            if client.client_id not in first.values():
                client.disconnect()

    keep = Client(admin_broker.port, "kick-keep", clean_start=False, session_expiry=300)
    keep.connect()
    keep.subscribe("adm/kick/keep", 1)
    assert call(admin_broker, "DELETE", "/api/v1/clients/kick-keep")[1]["result"] == "kicked"
    keep.wait_disconnect()
    keep.paho.loop_stop()
    wait_for(
        lambda: call(admin_broker, "GET", "/api/v1/clients/kick-keep")[1].get("connected") is False,
        "offline session kept",
    )
    again = Client(admin_broker.port, "kick-keep", clean_start=False, session_expiry=300)
    flags, _rc, _p = again.connect()
    assert flags.session_present
    # kicking an offline session needs --discard
    again.disconnect()
    wait_for(
        lambda: call(admin_broker, "GET", "/api/v1/clients/kick-keep")[1].get("connected") is False,
        "offline again",
    )
    status, _ = call(admin_broker, "DELETE", "/api/v1/clients/kick-keep")
    assert status == 404
    done = ctl(admin_broker, "kick", "kick-keep", "--discard")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kick-keep: discarded"
    assert call(admin_broker, "GET", "/api/v1/clients/kick-keep")[0] == 404
    fresh = Client(admin_broker.port, "kick-keep", clean_start=False, session_expiry=300)
    flags, _rc, _p = fresh.connect()
    assert not flags.session_present

    # connected and discarded: DISCONNECT 0x98, then no session
    done = ctl(admin_broker, "kick", "kick-keep", "--discard")
    assert done.returncode == 0 and done.stdout.strip() == "kick-keep: discarded", done.stderr
    rc, _props = fresh.wait_disconnect()
    assert rc.value == ReasonCode.ADMINISTRATIVE_ACTION
    fresh.paho.loop_stop()
    wait_for(lambda: call(admin_broker, "GET", "/api/v1/clients/kick-keep")[0] == 404, "discarded")
    assert ctl(admin_broker, "kick", "nobody-here").returncode == 1


def test_kick_closes_a_311_connection(admin_broker: AdminServe) -> None:
    raw = Raw(admin_broker.port, version=4)
    raw.connect("kick-311", clean=True)
    assert call(admin_broker, "DELETE", "/api/v1/clients/kick-311")[0] == 200
    assert raw.recv() is None  # closed, no DISCONNECT in 3.1.1
    raw.close()


# -- who would receive a topic --------------------------------------------------------------


def test_subscriptions_for_a_topic_span_both_workers(admin_broker: AdminServe) -> None:
    clients = on_both_workers(admin_broker, "who")
    try:
        for i, client in enumerate(clients):
            topic = "adm/who/+" if i % 2 else "adm/who/t"
            client.subscribe(topic, i % 3, sub_id=100 + i)
        clients[0].subscribe("$share/grp/adm/who/t", 1)
        clients[0].subscribe("adm/other", 0)
        status, answer = call(
            admin_broker, "GET", "/api/v1/subscriptions?topic=adm/who/t&limit=1000"
        )
        assert status == 200
        got = {
            (r["client_id"], r["topic_filter"], r["qos"], r["identifier"]) for r in answer["data"]
        }
        want = {
            (c.client_id, "adm/who/+" if i % 2 else "adm/who/t", i % 3, 100 + i)
            for i, c in enumerate(clients)
        } | {(clients[0].client_id, "$share/grp/adm/who/t", 1, None)}
        assert got == want
        assert {r["worker"] for r in answer["data"]} == {0, 1}
        assert call(admin_broker, "GET", "/api/v1/subscriptions?topic=adm/%23")[0] == 400
        assert call(admin_broker, "GET", "/api/v1/subscriptions")[0] == 400

        done = ctl(admin_broker, "subscriptions", "adm/who/t", "--limit", "1000")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == f"{len(want)} in all"
    finally:
        for client in clients:
            client.disconnect()


# -- publish ---------------------------------------------------------------------------------


def test_publish_reaches_subscribers_on_both_workers(admin_broker: AdminServe) -> None:
    clients = on_both_workers(admin_broker, "pub")
    try:
        for client in clients:
            client.subscribe("adm/pub/#", 2)
        body = {
            "topic": "adm/pub/a",
            "payload": "hello",
            "qos": 1,
            "properties": {
                "user_properties": {"k": "v"},
                "content_type": "text/plain",
                "correlation_data": "c-1",
                "response_topic": "adm/reply",
            },
        }
        status, answer = call(admin_broker, "POST", "/api/v1/publish", body)
        assert status == 200 and answer["published"] is True
        for client in clients:
            msg = client.get()
            assert (msg.topic, msg.payload, msg.qos) == ("adm/pub/a", b"hello", 1)
            assert msg.properties.UserProperty == [("k", "v")]
            assert msg.properties.ContentType == "text/plain"
            assert msg.properties.CorrelationData == b"c-1"
            assert msg.properties.ResponseTopic == "adm/reply"
        binary = bytes(range(256))
        status, _ = call(
            admin_broker,
            "POST",
            "/api/v1/publish",
            {
                "topic": "adm/pub/bin",
                "payload": base64.b64encode(binary).decode(),
                "payload_encoding": "base64",
                "qos": 2,
            },
        )
        assert status == 200
        for client in clients:
            msg = client.get()
            assert (msg.payload, msg.qos) == (binary, 2)

        done = ctl(admin_broker, "publish", "adm/pub/ctl", "from ctl", "-q", "1", "-D", "a=b")
        assert done.returncode == 0, done.stderr
        for client in clients:
            msg = client.get()
            assert (msg.topic, msg.payload, msg.qos) == ("adm/pub/ctl", b"from ctl", 1)
            assert msg.properties.UserProperty == [("a", "b")]

        for bad, field in (
            (b"{not json", "body"),
            ({"payload": "x"}, "topic"),
            ({"topic": "adm/+/x"}, "topic"),
            ({"topic": "adm/x", "qos": 3}, "qos"),
            ({"topic": "adm/x", "payload": "!!", "payload_encoding": "base64"}, "payload"),
            ({"topic": "adm/x", "properties": {"nope": 1}}, "properties.nope"),
        ):
            status, answer = call(admin_broker, "POST", "/api/v1/publish", bad)
            assert status == 400 and answer["error"].startswith(field), (bad, answer)
        assert call(admin_broker, "GET", "/api/v1/publish")[0] == 405
        for client in clients:
            client.expect_nothing(0.2)
    finally:
        for client in clients:
            client.disconnect()


# -- retained --------------------------------------------------------------------------------


def test_retained_get_list_and_delete(admin_broker: AdminServe) -> None:
    pub = Client(admin_broker.port, "ret-pub")
    pub.connect()
    watcher = Client(admin_broker.port, "ret-watch")
    watcher.connect()
    try:
        pub.publish("adm/ret/a", "one", qos=1, retain=True)
        pub.publish("adm/ret/b/c", b"\xff\x00", qos=1, retain=True)
        pub.publish("adm/ret/with space", "sp", qos=1, retain=True)
        wait_for(
            lambda: call(admin_broker, "GET", "/api/v1/retained/adm/ret/a")[0] == 200, "retained"
        )
        status, one = call(admin_broker, "GET", "/api/v1/retained/adm/ret/a")
        assert one == {
            "topic": "adm/ret/a",
            "payload": "one",
            "payload_encoding": "plain",
            "qos": 1,
        }
        _s, binary = call(admin_broker, "GET", "/api/v1/retained/" + quote("adm/ret/b/c"))
        assert binary["payload_encoding"] == "base64"
        assert base64.b64decode(binary["payload"]) == b"\xff\x00"
        _s, spaced = call(admin_broker, "GET", "/api/v1/retained/" + quote("adm/ret/with space"))
        assert spaced["payload"] == "sp"
        _s, listing = call(admin_broker, "GET", "/api/v1/retained?filter=" + quote("adm/ret/#"))
        assert [r["topic"] for r in listing["data"]] == [
            "adm/ret/a",
            "adm/ret/b/c",
            "adm/ret/with space",
        ]
        assert call(admin_broker, "GET", "/api/v1/retained?filter=a/%23/b")[0] == 400

        done = ctl(admin_broker, "retained", "--filter", "adm/ret/#")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "3 in all"
        done = ctl(admin_broker, "retained", "adm/ret/a")
        assert "payload: one" in done.stdout.splitlines()

        # deleting delivers nothing to a subscriber, and a new one gets nothing retained
        watcher.subscribe("adm/ret/#", 1)
        assert len(watcher.drain()) == 3  # the three retained on subscribe
        status, answer = call(admin_broker, "DELETE", "/api/v1/retained/adm/ret/a")
        assert status == 200 and answer == {"topic": "adm/ret/a", "deleted": True}
        done = ctl(admin_broker, "retained", "adm/ret/b/c", "--delete")
        assert done.returncode == 0 and done.stdout.strip() == "adm/ret/b/c: cleared"
        watcher.expect_nothing(0.3)
        assert call(admin_broker, "GET", "/api/v1/retained/adm/ret/a")[0] == 404
        assert call(admin_broker, "DELETE", "/api/v1/retained/adm/ret/a")[0] == 404
        # cleared on every worker: fresh subscribers, wherever they land, see only the third
        fresh = on_both_workers(admin_broker, "ret-fresh")
        try:
            for client in fresh:
                client.subscribe("adm/ret/#", 1)
                assert [m.topic for m in client.drain()] == ["adm/ret/with space"]
        finally:
            for client in fresh:
                client.disconnect()
        assert ctl(admin_broker, "retained", "adm/ret/a").returncode == 1
    finally:
        pub.publish("adm/ret/with space", "", qos=1, retain=True)
        pub.disconnect()
        watcher.disconnect()


def test_bad_requests_get_a_clear_answer(admin_broker: AdminServe) -> None:
    assert call(admin_broker, "GET", "/api/v1/nothing")[0] in (404,)
    assert call(admin_broker, "POST", "/api/v1/clients", {})[0] == 405
    status, answer = call(admin_broker, "DELETE", "/api/v1/clients/x?discard=maybe")
    assert status == 400 and answer["error"].startswith("discard")
    assert call(admin_broker, "POST", "/metrics", b"")[0] == 405
    # the broker still serves
    assert get(admin_broker.metrics_port, "/healthz")[0] == 200


def test_admin_token_needs_the_metrics_port() -> None:
    from shardmq.config import load_config
    from shardmq.errors import ConfigError

    with pytest.raises(ConfigError, match="admin_token"):
        load_config({"admin_token": "t"})
    with pytest.raises(ConfigError, match="admin_token"):
        load_config({"admin_token": "", "metrics_port": 9100})
    assert load_config({"admin_token": "t", "metrics_port": 9100}).admin_token == "t"
