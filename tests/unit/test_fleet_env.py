"""`fleet env` puts on PATH only what is there: kubectl always, helm once `fleet build` has built it."""

from __future__ import annotations

from pathlib import Path

from llm_operator.fleet.build import toolchain_paths
from llm_operator.fleet.cli import _path_line


def test_helm_is_on_path_only_once_built(tmp_path: Path) -> None:
    toolchain = toolchain_paths(tmp_path)
    assert _path_line(toolchain) == f"export PATH={toolchain.kubectl.parent}:$PATH"
    toolchain.helm.parent.mkdir(parents=True)
    toolchain.helm.write_text("")
    assert _path_line(toolchain) == f"export PATH={toolchain.kubectl.parent}:{toolchain.helm.parent}:$PATH"
