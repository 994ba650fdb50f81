"""TLS for the benchmarks' throw-away servers: a CA, certificates, and a Postgres that requires mutual TLS.

Guarantees: everything is made in the directory given and lives as long as it; the CA signs a server certificate
for 127.0.0.1/localhost (NATS and Postgres) and one client certificate whose common name is the database user
(`postgres`, as `clientcert=verify-full` wants); the Postgres started here admits TCP clients only over TLS with
a client certificate signed by that CA (its Unix socket stays open for administration). `env()` gives the
operator's processes the settings that make them use it all (`LLMOP_NATS_TLS_*`, `LLMOP_DATABASE_TLS_*`).

The pgserver wheel's Postgres is built without SSL, so `SslPostgres` runs a system build that has it (Debian's
postgresql package), as the pgserver wheel's system user when we are root (Postgres refuses to run as root).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llm_operator.embedded import _free_port


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def env(self) -> dict[str, str]:
        """The operator's TLS settings (CA and client certificate for both NATS and Postgres)."""
        return {
            "LLMOP_NATS_TLS_CA": str(self.ca),
            "LLMOP_NATS_TLS_CERT": str(self.client_cert),
            "LLMOP_NATS_TLS_KEY": str(self.client_key),
            "LLMOP_DATABASE_TLS_CA": str(self.ca),
            "LLMOP_DATABASE_TLS_CERT": str(self.client_cert),
            "LLMOP_DATABASE_TLS_KEY": str(self.client_key),
        }

    def client_context(self) -> ssl.SSLContext:
        """For the benchmark's own connections (its NATS subscriber, its database polls)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path, *, client_name: str = "postgres") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bench-ca"))
        .issuer_name(_name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, *, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    server_cert, server_key = leaf("bench-server", server=True)
    client_cert, client_key = leaf(client_name, server=False)
    return Pki(
        ca=_pem(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        server_cert=_pem(directory / "server.pem", server_cert),
        server_key=_pem(directory / "server-key.pem", server_key),
        client_cert=_pem(directory / "client.pem", client_cert),
        client_key=_pem(directory / "client-key.pem", client_key),
    )


def postgres_with_ssl() -> Path | None:
    """The bin directory of a Postgres build with SSL on this machine, if any."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        pg_config = candidate / "pg_config"
        if (candidate / "postgres").exists() and pg_config.exists():
            configure = subprocess.run(
                [str(pg_config), "--configure"], check=False, capture_output=True, text=True
            ).stdout
            if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
                return candidate
    return None


@dataclass
class SslPostgres:
    """A Postgres that requires TLS with a client certificate (pg_hba `hostssl ... clientcert=verify-full`)."""

    data_dir: Path
    pki: Pki
    database: str
    port: int = field(default_factory=_free_port)
    user: str = "pgserver"
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def _as_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> SslPostgres:
        binaries = postgres_with_ssl()
        if binaries is None:
            raise RuntimeError("no Postgres build with SSL on this machine (apt-get install postgresql)")
        self.data_dir.mkdir(parents=True)
        parent = self.data_dir.parent
        # The server's user must reach its directory, inside a temporary one (0700): let others search (not
        # list) the directories on the way that do not let them yet, as pgserver does for its own.
        for ancestor in [parent, *parent.parents]:
            if not ancestor.stat().st_mode & 0o001:
                ancestor.chmod(ancestor.stat().st_mode | 0o011)
        self._own(self.data_dir)
        user = self._as_user()
        initdb = [str(binaries / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres"]
        done = subprocess.run(initdb, check=False, capture_output=True, text=True, cwd="/", **user)
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        for source, name in ((self.pki.server_cert, "server.crt"), (self.pki.server_key, "server.key"),
                             (self.pki.ca, "ca.crt")):  # fmt: skip
            target = self.data_dir / name
            target.write_bytes(source.read_bytes())
            target.chmod(0o600)
            self._own(target)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n"
                "max_connections = 200\nfsync = off\n"  # as the embedded Postgres: a benchmark, not a store of record
            )
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-full\n"
        )
        with (parent_log := parent / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(binaries / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", str(self.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, cwd="/", **user,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        socket = ["-h", str(self.data_dir), "-p", str(self.port), "-U", "postgres"]
        while subprocess.run([str(binaries / "pg_isready"), *socket], check=False, capture_output=True).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres with SSL did not start; see {parent_log}")
            time.sleep(0.1)
        subprocess.run([str(binaries / "createdb"), *socket, self.database], check=True, capture_output=True, **user)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
