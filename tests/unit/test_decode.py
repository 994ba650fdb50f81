"""Wire bytes to a verdict (planner/decode.py) and the stream's gaps (planner/gaps.py): pure rules."""

from __future__ import annotations

import json

from api.events import encode_event
from bus.subjects import Subjects
from planner.decode import Delivery, decode_delivery, unstorable_at
from planner.gaps import gaps, was_reset
from tests import builders

SUBJECTS = Subjects("t")


def deliver(data: bytes) -> Delivery:
    return Delivery(SUBJECTS.events("a100"), 1, data)


def model(spec: dict[str, object]) -> bytes:
    return encode_event(builders.observed("a100", "LLMModel", builders.llm_model("m", "team", spec)))


def test_a_nul_anywhere_is_refused_with_its_path() -> None:
    verdict = decode_delivery(deliver(model({"modelName": "a\0b", "image": "x"})), SUBJECTS)
    assert verdict.event is None
    assert verdict.refused is not None
    assert "NUL" in verdict.refused and "object.spec.modelName" in verdict.refused


def test_a_nul_in_a_key_or_a_list_is_found() -> None:
    assert unstorable_at({"a": [{"ok": "x"}, {"b\0": "y"}]}) == ("a[1].'b\\x00'", "a NUL character (U+0000) in a key")
    assert unstorable_at({"a": ["x", "y\0"]}) == ("a[1]", "a NUL character (U+0000)")


def test_a_lone_surrogate_is_refused() -> None:
    raw = model({"modelName": "ok", "image": "x"}).replace(b'"ok"', b'"\\ud800"')
    verdict = decode_delivery(deliver(raw), SUBJECTS)
    assert verdict.event is None and verdict.refused  # the JSON parser refuses it already
    assert unstorable_at({"a": "x\ud800"}) == ("a", "a lone UTF-16 surrogate")


def test_an_escaped_backslash_before_u0000_is_text_and_kept() -> None:
    raw = model({"modelName": "a\\u0000b", "image": "x"})  # a backslash, then the letters u0000
    assert b"\\\\u0000" in raw
    verdict = decode_delivery(deliver(raw), SUBJECTS)
    assert verdict.event is not None
    assert not verdict.raw_ok  # conservative: stored as the model's JSON, which says the same


def test_other_control_characters_are_kept_and_the_raw_bytes_used() -> None:
    odd = "".join(chr(c) for c in range(1, 32)) + "\x7f\u2028"
    verdict = decode_delivery(deliver(model({"modelName": odd, "image": "x"})), SUBJECTS)
    assert verdict.event is not None and verdict.raw_ok
    assert json.loads(encode_event(verdict.event))["object"]["spec"]["modelName"] == odd


def test_gaps_name_the_missing_ranges_and_ignore_repeats() -> None:
    assert gaps(0, [1, 2, 3]) == []
    assert gaps(5, [9, 10, 12]) == [(6, 8), (11, 11)]
    assert gaps(5, [4, 5, 6]) == []  # already handled: not a gap
    assert was_reset(10, 3) and not was_reset(10, 10)


def test_snapshots_of_the_wrong_shape_are_refused_naming_the_field() -> None:
    """From a buggy or compromised agent: the fold would fail on them, or store rows every later step fails on."""
    node = builders.observed("a100", "Node", builders.gpu_node("n"))
    cases = {
        "labels": [["a", "b"]],
        "taints": "NoSchedule",
        "ready": "yes",
        "allocatable": {"nvidia.com/gpu": ["8"]},
    }
    for field, value in cases.items():
        wrong = node.model_copy(update={"object": {**node.object, field: value}})
        verdict = decode_delivery(deliver(encode_event(wrong)), SUBJECTS)
        assert verdict.event is None and verdict.refused, field
        # Refused when the event is decoded (api.snapshots), naming the field.
        assert field in verdict.refused, verdict.refused
    labels = {**node.object["labels"], "nvidia.com/gpu.product": 7}
    wrong = node.model_copy(update={"object": {**node.object, "labels": labels}})
    refused = decode_delivery(deliver(encode_event(wrong)), SUBJECTS).refused
    assert refused and "nvidia.com/gpu.product" in refused


def test_every_snapshot_the_watcher_makes_has_the_expected_shape() -> None:
    for kind, obj in [
        ("Node", builders.gpu_node("n")),
        ("Node", builders.cpu_node("c")),
        ("LLMModel", builders.llm_model("m", "team", {"modelName": "x", "image": "y"})),
        ("LLMDeployment", builders.llm_deployment("d", "team", {"modelRef": "m"}, finalizers=["x"], deleting=True)),
    ]:
        verdict = decode_delivery(deliver(encode_event(builders.observed("a100", kind, obj))), SUBJECTS)
        assert verdict.event is not None, verdict.refused
