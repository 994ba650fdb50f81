"""A child process started, stopped and killed one way: the embedded NATS server, and the operator processes and
servers that fault tests and benchmarks run, all go through `Process`.

Guarantees:
- `start` appends the process's stdout and stderr to its log file and refuses to start it twice.
- `stop` asks it to end (`stop_signal`, SIGTERM unless said otherwise) and kills it after `stop_timeout` seconds;
  `kill` is SIGKILL with no goodbye, as a crash or an OOM kill. Both reap it, so no zombie is left, and both are
  no-ops on a process that is not running.
- By default the child runs in a session of its own, so a Ctrl-C meant for the parent does not reach it first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def operator_command(*argv: str, python_options: Sequence[str] = ()) -> list[str]:
    """`llm-operator ARGV` run by this interpreter (`python_options` go before `-m`, e.g. a profiler's)."""
    return [sys.executable, *python_options, "-m", "llm_operator", *argv]


@dataclass
class Process:
    name: str
    command: list[str]
    log: Path
    env: dict[str, str] | None = None
    """The child's whole environment (None: this process's)."""
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 15.0
    new_session: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    """More `subprocess.Popen` options (cwd, user, group, ...)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        assert not self.running, f"{self.name} is running"
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
                **self.options,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid while it runs (None once it has exited or was never started)."""
        return self.process.pid if self.process is not None and self.running else None

    def kill(self) -> bool:
        """SIGKILL; True if it was running."""
        was_running = self.running
        if self.process is not None and was_running:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        return was_running

    def stop(self) -> None:
        if self.process is not None and self.running:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
