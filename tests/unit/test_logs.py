"""Both log formats print the structured fields a line was given, and JSON keeps them as fields."""

from __future__ import annotations

import json
import logging

from llm_operator.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord("applier.service", logging.INFO, __file__, 1, "plan %s: %s", ("p-1", "Applied"), None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_the_plan_and_the_event() -> None:
    line = json.loads(JsonFormatter().format(record(plan_id="p-1", epoch=3, cluster="a100", object="team/chat")))
    assert line["message"] == "plan p-1: Applied"
    assert (line["plan_id"], line["epoch"], line["cluster"], line["object"]) == ("p-1", 3, "a100", "team/chat")
    assert json.loads(JsonFormatter().format(record(event_id="e-1")))["event_id"] == "e-1"
    assert "plan_id" not in json.loads(JsonFormatter().format(record()))  # absent, not null


def test_text_lines_carry_them_too() -> None:
    assert TextFormatter().format(record(plan_id="p-1", epoch=3)).endswith("plan p-1: Applied [plan_id=p-1 epoch=3]")
