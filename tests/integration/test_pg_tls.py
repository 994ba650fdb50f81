"""TLS to Postgres, against a real Postgres server that requires mutual TLS (issue 16).

The server (`tests.fixtures.processes.KillablePostgres` with a Postgres build that has SSL — the pgserver
wheel's has not; Debian's postgresql package has) runs with `ssl = on`, its
certificate signed by the fleet's CA, and a pg_hba.conf that admits TCP clients only over TLS with a client
certificate that the same CA signed and whose common name is the database user (`hostssl ... clientcert=
verify-full`). Certificates are made here with `cryptography` (the helpers of tests/integration/test_tls.py).

What it holds: the operator's engine, built from `Settings` exactly as the planner builds it
(`runtime.database_tls`, `runtime.open_engine` with migrations), connects, migrates and reads over TLS with its
client certificate (the server's `pg_stat_ssl` says so); a connection without a client certificate, with a
stranger's certificate, trusting another CA, or in plaintext is refused with an error that says why.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from llm_operator.runtime import OperatorError, database_tls, open_engine
from llm_operator.settings import Settings
from store.engine import DatabaseTls
from tests.fixtures.processes import KillablePostgres, _pg_bin
from tests.integration.test_tls import Issued, _ca, _leaf

pytestmark = [pytest.mark.anyio, pytest.mark.services]


@dataclass(frozen=True)
class PgPki:
    ca: Path
    client: Issued
    stranger_ca: Path
    stranger_client: Issued
    server: KillablePostgres

    @property
    def url(self) -> str:
        return self.server.url("postgres")


def _own(path: Path, user: str) -> None:
    """The server's files belong to the user it runs as; a private key must not be readable by others."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o600)


def _postgres_with_ssl() -> Path | None:
    """A Postgres build that has SSL: the pgserver wheel's has not; a system one (Debian's postgresql) has."""
    for candidate in [_pg_bin(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        pg_config = candidate / "pg_config"
        if not (candidate / "postgres").exists() or not pg_config.exists():
            continue
        configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True, check=False).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return candidate
    return None


@pytest.fixture(scope="module")
def pg_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgPki]:
    directory = tmp_path_factory.mktemp("pgpki")
    (directory / "stranger").mkdir()
    fleet_ca = _ca(directory, "fleet-ca")
    stranger_ca = _ca(directory / "stranger", "stranger-ca")
    server_cert = _leaf(directory, "postgres-server", fleet_ca, server=True)
    # verify-full: the certificate's common name must be the database user the client logs in as.
    client = _leaf(directory, "postgres", fleet_ca, server=False)
    stranger = _leaf(directory / "stranger", "postgres", stranger_ca, server=False)

    binaries = _postgres_with_ssl()
    if binaries is None:
        # Never skipped: .ci/run installs one where the machine lacks it.
        pytest.fail("no Postgres build with SSL on this machine (apt-get install postgresql)", pytrace=False)
    server = KillablePostgres(directory / "pg" / "data", bin_dir=binaries)
    server.start()  # initdb (trust, plaintext) and a first start
    server.stop()
    data = server.data_dir
    for source, name in (
        (server_cert.cert, "server.crt"),
        (server_cert.key, "server.key"),
        (fleet_ca[0].cert, "ca.crt"),
    ):
        (data / name).write_bytes(source.read_bytes())
        _own(data / name, server.user)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# tests/integration/test_pg_tls.py\nssl = on\nssl_cert_file = 'server.crt'\n"
            "ssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n"
        )
    # Over TCP only TLS with a verified client certificate; the Unix socket (in the data directory) stays for
    # administration.
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-full\n"
        "hostssl all all ::1/128 trust clientcert=verify-full\n"
    )
    server.start()
    yield PgPki(
        ca=fleet_ca[0].cert,
        client=client,
        stranger_ca=stranger_ca[0].cert,
        stranger_client=stranger,
        server=server,
    )
    server.stop()


async def test_the_planners_engine_connects_with_the_ca_and_its_client_certificate(pg_pki: PgPki) -> None:
    settings = Settings(
        database_url=pg_pki.url,
        database_tls_ca=pg_pki.ca,
        database_tls_cert=pg_pki.client.cert,
        database_tls_key=pg_pki.client.key,
    )
    engine = await open_engine(pg_pki.url, migrate=True, tls=database_tls(settings))
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
            ).one()
            migrated = await conn.scalar(text("SELECT count(*) FROM alembic_version"))
    finally:
        await engine.dispose()
    assert row[0] is True, "the connection is not encrypted"
    assert str(row[1]).startswith("TLSv1."), row
    assert row[2] == "/CN=postgres", row  # the server verified our client certificate
    assert migrated == 1


CASES: dict[str, tuple[Callable[[PgPki], DatabaseTls], str]] = {
    # What the client presents -> what the error must say (server- or client-side, in the driver's words).
    "no client certificate": (
        lambda p: DatabaseTls(ca=p.ca),
        r"certificate",
    ),
    # With TLS 1.3 the server checks the client's certificate after the client thinks the handshake is done: the
    # client only sees the connection dropped; the server's log says why (asserted below).
    "a stranger's client certificate": (
        lambda p: DatabaseTls(ca=p.ca, cert=p.stranger_client.cert, key=p.stranger_client.key),
        r"connection was closed|reset by peer|certificate",
    ),
    "a CA that did not sign the server": (
        lambda p: DatabaseTls(ca=p.stranger_ca, cert=p.client.cert, key=p.client.key),
        r"certificate verify failed",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_anything_else_is_refused_with_a_clear_error(pg_pki: PgPki, case: str) -> None:
    make_tls, says = CASES[case]
    with pytest.raises(OperatorError) as raised:  # what `llm-operator planner` prints before it exits
        await open_engine(pg_pki.url, migrate=True, tls=make_tls(pg_pki))
    message = _chain(raised.value)
    print(f"\n{case}: {type(raised.value).__name__}: {message[:300]}")
    assert re.search(says, message, re.IGNORECASE), message
    assert "database postgresql+asyncpg://postgres@127.0.0.1" in str(raised.value)
    if case == "a stranger's client certificate":
        log = (pg_pki.server.data_dir.parent / "server.log").read_text()
        assert "could not accept SSL connection: certificate verify failed" in log


async def test_plaintext_is_refused(pg_pki: PgPki) -> None:
    """No TLS at all (the driver told not to try): pg_hba.conf has no entry for it."""
    with pytest.raises(OperatorError) as raised:
        await open_engine(pg_pki.url + "?ssl=disable", migrate=True)
    message = _chain(raised.value)
    print(f"\nplaintext: {type(raised.value).__name__}: {message[:300]}")
    assert re.search(r"no pg_hba.conf entry .*no encryption", message), message


def _chain(exc: BaseException) -> str:
    """The error's message and its causes': what an operator reading the log sees."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)
