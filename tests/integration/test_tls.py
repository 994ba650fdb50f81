"""TLS to NATS, against a real nats-server that verifies clients (mutual TLS) and requires an identity.

Certificates are made here with `cryptography`: the fleet's CA, the server's (for 127.0.0.1), an agent's client
certificate, and a stranger's CA and client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.auth import Role
from bus.connection import Tls, connect
from bus.errors import BusUnavailable
from llm_operator.embedded import EmbeddedNats, _free_port
from llm_operator.identities import BusIdentities
from llm_operator.runtime import connect_as
from llm_operator.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.services]


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Issued(cert_path, key_path)


def _ca(directory: Path, stem: str) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key), cert, key


def _leaf(
    directory: Path, stem: str, ca: tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool
) -> Issued:
    _, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Path
    client: Issued
    stranger_ca: Path
    stranger_client: Issued
    server: EmbeddedNats
    identities: BusIdentities


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    directory = tmp_path_factory.mktemp("pki")
    fleet_ca = _ca(directory, "fleet-ca")
    stranger_ca = _ca(directory, "stranger-ca")
    server_cert = _leaf(directory, "nats", fleet_ca, server=True)
    identities = BusIdentities(directory / "bus")
    identities.add("fleet", "east", Role.CLUSTER)
    server = EmbeddedNats(
        directory / "nats",
        port=_free_port(),
        auth_config=identities.server_config_path,
        tls_cert=server_cert.cert,
        tls_key=server_cert.key,
        tls_ca=fleet_ca[0].cert,
    ).start()
    yield Pki(
        ca=fleet_ca[0].cert,
        client=_leaf(directory, "agent-east", fleet_ca, server=False),
        stranger_ca=stranger_ca[0].cert,
        stranger_client=_leaf(directory, "stranger", stranger_ca, server=False),
        server=server,
        identities=identities,
    )
    server.stop()


async def test_the_right_ca_and_client_certificate_connect_through_the_settings(pki: Pki) -> None:
    settings = Settings(
        nats_url=pki.server.url,
        nats_identities_dir=pki.identities.seeds_dir("fleet"),
        nats_tls_ca=pki.ca,
        nats_tls_cert=pki.client.cert,
        nats_tls_key=pki.client.key,
    )
    nc = await connect_as(settings, pki.server.url, "east")
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "case",
    ["no client certificate", "a stranger's client certificate", "a CA that did not sign the server", "plaintext"],
)
async def test_anything_else_is_refused(pki: Pki, case: str) -> None:
    tls = {
        "no client certificate": Tls(ca=pki.ca),
        "a stranger's client certificate": Tls(ca=pki.ca, cert=pki.stranger_client.cert, key=pki.stranger_client.key),
        "a CA that did not sign the server": Tls(ca=pki.stranger_ca, cert=pki.client.cert, key=pki.client.key),
        "plaintext": None,
    }[case]
    # The server ends the handshake (some cases look like a lost connection to the client, which retries them).
    with pytest.raises(BusUnavailable, match=r"refused the connection|cannot reach NATS"):
        await connect(
            pki.server.url,
            name="tls-test",
            nkey_seed=pki.identities.seed_path("fleet", "east"),
            tls=tls,
            wait_seconds=3,
        )
