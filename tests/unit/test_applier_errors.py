"""How the applier classifies what a plan's API calls raised, alone or in parallel (an exception group)."""

from __future__ import annotations

from applier.service import _kube_error
from kubeapi import KubeError, TransientKubeError


def test_a_single_error_is_itself() -> None:
    error = TransientKubeError("down", status=503, reason="")
    assert _kube_error(error) is error


def test_parallel_transient_errors_are_retried_and_a_permanent_one_wins() -> None:
    transient = TransientKubeError("webhook down", status=500, reason="InternalError")
    refused = KubeError("invalid", status=422, reason="Invalid")
    assert _kube_error(ExceptionGroup("calls", [transient, ExceptionGroup("inner", [transient])])) is transient
    assert _kube_error(ExceptionGroup("calls", [transient, refused])) is refused


def test_a_group_with_anything_else_is_not_swallowed() -> None:
    transient = TransientKubeError("down", status=503, reason="")
    assert _kube_error(ExceptionGroup("calls", [transient, RuntimeError("bug")])) is None
