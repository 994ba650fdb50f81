"""Logging set-up: readable lines for people, or one JSON object per line for log pipelines.

Guarantees: structured fields passed as ``extra={...}`` (cluster, object, event_id, plan_id, epoch, component)
appear in both formats, as fields of their own in JSON; noisy third-party loggers are kept at WARNING. Who passes
them: the applier on every line about one plan (cluster, object, plan_id, epoch), the planner on every placement
decision (cluster, object, the decision's event_id, epoch).
Every line, tracebacks included, passes through `redact_text`, so a password in a URL or an nkey seed never
reaches the log even if some message (ours or a library's) carries one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

# "object" is namespace/name: LogRecord reserves `name` for the logger.
FIELDS = ("cluster", "object", "event_id", "plan_id", "epoch", "component")
_NOISY = ("aiohttp", "asyncio", "nats", "kubernetes_asyncio", "alembic", "sqlalchemy", "pgserver")


_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:@/]*):[^\s@/]+@")
_TOKEN = re.compile(r"(?P<head>(?:nats|tls|ws|wss)://)[^\s:@/]+@")
_SEED = re.compile(r"\bS[UANOC][A-Z2-7]{54,}\b")


def redact_text(text: str) -> str:
    """`text` with URL passwords, NATS URL tokens and nkey seeds replaced by ``***``."""
    text = _PASSWORD.sub(r"\g<head>:***@", text)
    text = _TOKEN.sub(r"\g<head>***@", text)
    return _SEED.sub("S***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)-22s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = redact_text(super().format(record))
        extras = [f"{f}={getattr(record, f)}" for f in FIELDS if getattr(record, f, None) is not None]
        return f"{text} [{' '.join(extras)}]" if extras else text


def configure(*, level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
