"""The one process wrapper, on real child processes: output goes to the log, stop asks and then kills, kill is
SIGKILL, and none of them leaves a zombie or acts on a process that is not running."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from llm_operator.processes import Process, operator_command

# Says it started, then waits for a signal; on SIGTERM says goodbye, unless told to ignore it.
CHILD = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: (print("goodbye", flush=True), sys.exit(0)))
print("started", flush=True)
while True:
    time.sleep(1)
"""


def child(tmp_path: Path, mode: str = "polite", stop_timeout: float = 15.0) -> Process:
    return Process("child", [sys.executable, "-c", CHILD, mode], tmp_path / "child.log", stop_timeout=stop_timeout)


def wait_for_line(log: Path, line: str) -> None:
    deadline = time.monotonic() + 30
    while line not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"{line!r} never appeared in {log}"
        time.sleep(0.02)


def test_stop_asks_first_and_the_output_is_in_the_log(tmp_path: Path) -> None:
    proc = child(tmp_path)
    proc.start()
    wait_for_line(proc.log, "started")
    popen = proc.process
    assert proc.running and proc.pid == popen.pid  # type: ignore[union-attr]
    with pytest.raises(AssertionError, match="child is running"):
        proc.start()
    proc.stop()
    assert not proc.running and proc.pid is None
    assert popen is not None and popen.returncode == 0  # it ended by itself after SIGTERM (and was reaped)
    assert proc.log.read_text().split() == ["started", "goodbye"]


def test_stop_kills_what_does_not_listen(tmp_path: Path) -> None:
    proc = child(tmp_path, "ignore", stop_timeout=0.5)
    proc.start()
    wait_for_line(proc.log, "started")
    popen = proc.process
    proc.stop()
    assert popen is not None and popen.returncode == -signal.SIGKILL


def test_kill_is_sigkill_and_only_once(tmp_path: Path) -> None:
    proc = child(tmp_path)
    proc.start()
    wait_for_line(proc.log, "started")
    popen = proc.process
    assert proc.kill() is True
    assert popen is not None and popen.returncode == -signal.SIGKILL
    assert "goodbye" not in proc.log.read_text()
    assert proc.kill() is False  # nothing running: nothing to do
    proc.stop()
    proc.start()  # and it starts again, appending to the same log
    wait_for_line(proc.log, "started\nstarted")
    proc.stop()


def test_operator_command_runs_this_interpreter() -> None:
    assert operator_command("planner", python_options=["-X", "dev"]) == [
        sys.executable,
        "-X",
        "dev",
        "-m",
        "llm_operator",
        "planner",
    ]
