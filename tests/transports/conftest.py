"""Certificates for the transport tests, made once per session with trustme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass
class PKI:
    ca: trustme.CA
    cafile: str
    certfile: str
    keyfile: str
    #: a client certificate for CN=alice, issued by ``ca``
    client_certfile: str
    client_keyfile: str
    #: a client certificate issued by another CA
    rogue_certfile: str
    rogue_keyfile: str
    directory: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="shardmq tests")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(
        "alice.example",
        common_name="alice",
        organization_name="Example",
        organization_unit_name="Devices",
    )
    rogue = trustme.CA().issue_cert("mallory.example", common_name="mallory")

    def write(name: str, blob: trustme.Blob) -> str:
        path = directory / name
        blob.write_to_path(str(path))
        return str(path)

    ca_path = write("ca.pem", ca.cert_pem)
    server_cert = directory / "server.pem"
    server_cert.write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    return PKI(
        ca=ca,
        cafile=ca_path,
        certfile=str(server_cert),
        keyfile=write("server.key", server.private_key_pem),
        client_certfile=write("client.pem", client.cert_chain_pems[0]),
        client_keyfile=write("client.key", client.private_key_pem),
        rogue_certfile=write("rogue.pem", rogue.cert_chain_pems[0]),
        rogue_keyfile=write("rogue.key", rogue.private_key_pem),
        directory=directory,
    )
