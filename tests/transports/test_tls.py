"""MQTT over TLS: server certificates, mutual TLS, identities, reload, refusals."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from shardmq.config import Config, Listener
from shardmq.errors import ConfigError
from shardmq.protocol.constants import PacketType, ReasonCode
from shardmq.worker.tls import build_context
from tests.helpers import WAIT, BrokerThread, Client

from .conftest import PKI
from .helpers import listener_port, mqtt_connect, paho_client, read_all, tls_socket

MakeBroker = Callable[..., BrokerThread]


def tls_broker(make_broker: MakeBroker, pki: PKI, **settings: Any) -> BrokerThread:
    settings.setdefault("certfile", pki.certfile)
    settings.setdefault("keyfile", pki.keyfile)
    return make_broker(tls_port=0, **settings)


def test_publish_and_receive_over_tls(
    make_broker: MakeBroker, pki: PKI, clients: Callable[..., Client], version: int
) -> None:
    bt = tls_broker(make_broker, pki)
    port = listener_port(bt)
    sub = paho_client(port, cafile=pki.cafile, version=version)
    pub = paho_client(port, cafile=pki.cafile, version=version)
    try:
        sub.connect()
        pub.connect()
        sub.subscribe("tls/t", 1)
        pub.publish("tls/t", b"over tls", qos=1)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos) == ("tls/t", b"over tls", 1)
    finally:
        sub.disconnect()
        pub.disconnect()


def test_server_context_requires_tls_1_2(pki: PKI) -> None:
    context = build_context(pki.certfile, pki.keyfile, None, False, None, "")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    mutual = build_context(pki.certfile, pki.keyfile, pki.cafile, True, None, "")
    assert mutual.verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_accepts_a_good_certificate_and_the_hook_sees_its_subject(
    make_broker: MakeBroker, pki: PKI
) -> None:
    seen: list[Any] = []

    def setup(broker: Any) -> None:
        @broker.on_connect
        async def check(client: Any, packet: Any) -> bool:
            seen.append((client.certificate_subject, client.username))
            return True

    bt = tls_broker(make_broker, pki, cafile=pki.cafile, require_client_cert=True, setup=setup)
    client = paho_client(
        listener_port(bt),
        cafile=pki.cafile,
        certfile=pki.client_certfile,
        keyfile=pki.client_keyfile,
        username="given",
    )
    client.connect()
    client.disconnect()
    assert seen == [("CN=alice,OU=Devices,O=Example", "given")]


@pytest.mark.parametrize("cert", ["none", "rogue"])
def test_mutual_tls_refuses_a_missing_or_untrusted_certificate(
    make_broker: MakeBroker, pki: PKI, caplog: pytest.LogCaptureFixture, cert: str
) -> None:
    bt = tls_broker(make_broker, pki, cafile=pki.cafile, require_client_cert=True)
    port = listener_port(bt)
    certfile, keyfile = (pki.rogue_certfile, pki.rogue_keyfile) if cert == "rogue" else (None, None)
    with caplog.at_level(logging.INFO, logger="shardmq.listener"):
        try:
            sock = tls_socket(port, pki.cafile, certfile, keyfile)
        except (ssl.SSLError, ConnectionResetError):
            pass  # TLS 1.2: the handshake itself fails
        else:
            # TLS 1.3: the client finishes first and learns on its next read
            with sock:
                assert mqtt_connect(sock) is None
        # a good client on the same listener is unaffected
        good = tls_socket(port, pki.cafile, pki.client_certfile, pki.client_keyfile)
        with good:
            assert mqtt_connect(good).reason_code == ReasonCode.SUCCESS
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


def test_use_identity_as_username(make_broker: MakeBroker, pki: PKI) -> None:
    seen: list[Any] = []

    def setup(broker: Any) -> None:
        @broker.on_connect
        async def check(client: Any, packet: Any) -> bool:
            seen.append((client.username, packet.username))
            return True

    bt = tls_broker(
        make_broker,
        pki,
        cafile=pki.cafile,
        require_client_cert=True,
        use_identity_as_username=True,
        allow_anonymous=False,
        setup=setup,
    )
    client = paho_client(
        listener_port(bt),
        cafile=pki.cafile,
        certfile=pki.client_certfile,
        keyfile=pki.client_keyfile,
        username="ignored",
    )
    client.connect()
    client.disconnect()
    assert seen == [("alice", "alice")]


def test_use_identity_as_username_without_a_certificate_is_not_authorized(
    make_broker: MakeBroker, pki: PKI
) -> None:
    bt = tls_broker(make_broker, pki, cafile=pki.cafile, use_identity_as_username=True)
    with tls_socket(listener_port(bt), pki.cafile) as sock:
        connack = mqtt_connect(sock)
    assert connack.packet_type == PacketType.CONNACK
    assert connack.reason_code == ReasonCode.NOT_AUTHORIZED


def test_plain_tcp_client_on_the_tls_port_is_refused_and_logged(
    make_broker: MakeBroker, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    bt = tls_broker(make_broker, pki)
    port = listener_port(bt)
    established = tls_socket(port, pki.cafile)
    assert mqtt_connect(established, "established").reason_code == ReasonCode.SUCCESS
    with (
        caplog.at_level(logging.INFO, logger="shardmq.listener"),
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as plain,
    ):
        plain.sendall(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc")
        answer = read_all(plain)
    assert not answer.startswith(b"\x20")  # no CONNACK; at most a TLS alert
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)
    # the established connection is untouched
    from shardmq.protocol.codec import encode
    from shardmq.protocol.packets import Pingreq

    established.sendall(encode(Pingreq(), 5))
    assert established.recv(2) == b"\xd0\x00"
    established.close()


def test_sighup_reload_serves_new_certificates_and_keeps_connections(
    make_broker: MakeBroker, pki: PKI, tmp_path: Any
) -> None:
    certfile = tmp_path / "server.pem"
    keyfile = tmp_path / "server.key"
    shutil.copy(pki.certfile, certfile)
    shutil.copy(pki.keyfile, keyfile)
    bt = tls_broker(make_broker, pki, certfile=str(certfile), keyfile=str(keyfile))
    port = listener_port(bt)
    old = paho_client(port, cafile=pki.cafile)
    old.connect()
    old.subscribe("reload/t", 0)

    def serial(sock: ssl.SSLSocket) -> str:
        cert = sock.getpeercert()
        assert cert is not None
        return str(cert["serialNumber"])

    with tls_socket(port, pki.cafile) as sock:
        before = serial(sock)
    renewed = pki.ca.issue_cert("127.0.0.1", "localhost")
    certfile.write_bytes(b"".join(b.bytes() for b in renewed.cert_chain_pems))
    keyfile.write_bytes(renewed.private_key_pem.bytes())
    assert bt.loop is not None
    ok = asyncio.run_coroutine_threadsafe(bt.broker.reload_tls(), bt.loop).result(WAIT)
    assert ok
    with tls_socket(port, pki.cafile) as sock:
        assert serial(sock) != before
    # a file that no longer loads keeps the current certificates
    keyfile.write_text("not a key")
    assert not asyncio.run_coroutine_threadsafe(bt.broker.reload_tls(), bt.loop).result(WAIT)
    with tls_socket(port, pki.cafile) as sock:
        assert serial(sock) != before
    bt.call(lambda: bt.broker.publish("reload/t", b"still here"))
    assert old.get().payload == b"still here"
    old.disconnect()


# -- settings ----------------------------------------------------------------------------


def test_listener_file_not_found_names_the_field(pki: PKI) -> None:
    listeners = [
        Listener("ws", 0),
        Listener("tls", 0, certfile="/nonexistent/cert.pem"),
    ]
    with pytest.raises(ConfigError, match=r"^listeners\[1\]\.certfile: file not found"):
        Config(listeners=tuple(listeners))


def test_tls_port_needs_a_certificate() -> None:
    with pytest.raises(ConfigError, match=r"^certfile: required by tls_port"):
        Config(tls_port=8883)


def test_require_client_cert_needs_a_cafile(pki: PKI) -> None:
    with pytest.raises(ConfigError, match=r"^listeners\[0\]\.require_client_cert: "):
        Config(
            listeners=(Listener("tls", 0, certfile=pki.certfile, require_client_cert=True),),
        )


def test_a_certificate_that_does_not_load_stops_the_start(
    make_broker: MakeBroker, pki: PKI, tmp_path: Any
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"^listeners\[0\]\.certfile: cannot load"):
        make_broker(listeners=[{"type": "tls", "port": 0, "certfile": str(bad)}])


def test_bad_ciphers_are_named(make_broker: MakeBroker, pki: PKI) -> None:
    listener = {"type": "tls", "port": 0, "certfile": pki.certfile, "keyfile": pki.keyfile}
    with pytest.raises(ConfigError, match=r"^listeners\[0\]\.ciphers: "):
        make_broker(listeners=[dict(listener, ciphers="NO-SUCH-CIPHER")])


def test_configured_ciphers_are_used(make_broker: MakeBroker, pki: PKI) -> None:
    listener = {
        "type": "tls",
        "port": 0,
        "certfile": pki.certfile,
        "keyfile": pki.keyfile,
        "ciphers": "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256",
    }
    bt = make_broker(listeners=[listener])
    context = ssl.create_default_context(cafile=pki.cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    port = listener_port(bt)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        cipher = sock.cipher()
        assert cipher is not None and cipher[0].endswith("AES128-GCM-SHA256")


def test_trustme_is_the_ca(pki: PKI) -> None:
    assert isinstance(pki.ca, trustme.CA)


def test_certificate_identity_meets_the_password_file_and_the_acl(
    make_broker: MakeBroker, pki: PKI, tmp_path: Any, version: int
) -> None:
    """With use_identity_as_username the verified certificate is the
    credential (as in mosquitto): no password is asked on the TLS listener,
    and the ACL file holds for the certificate's name. On the plain port the
    same name still needs its password."""
    from shardmq.auth.passwd import PasswordFile

    passwords = PasswordFile()
    passwords.set("alice", "wonderland")
    passwords.save(tmp_path / "passwd")
    (tmp_path / "acl").write_text("user alice\ntopic readwrite alice/#\n")
    bt = tls_broker(
        make_broker,
        pki,
        cafile=pki.cafile,
        require_client_cert=True,
        use_identity_as_username=True,
        password_file=str(tmp_path / "passwd"),
        acl_file=str(tmp_path / "acl"),
    )
    client = paho_client(
        listener_port(bt),
        cafile=pki.cafile,
        certfile=pki.client_certfile,
        keyfile=pki.client_keyfile,
        version=version,
    )
    client.connect()
    assert client.subscribe("alice/#", 1)[0].value == 1
    assert client.subscribe("bob/#", 1)[0].value == (
        ReasonCode.NOT_AUTHORIZED if version == 5 else 0x80
    )
    client.publish("bob/x", b"denied", qos=1)
    client.publish("alice/x", b"mine", qos=1)
    assert client.get().payload == b"mine"
    client.disconnect()
    plain = Client(bt.port, username="alice", version=version)
    _, rc, _ = plain.connect(expect_success=False)
    assert rc.value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    plain.paho.loop_stop()
