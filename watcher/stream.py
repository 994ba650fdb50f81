"""List-then-watch of one kind in one cluster, forever: the shape kopf and client-go informers use.

Guarantees:
- Every object present is reported after each (re)list, followed by `listed` with the full set, so deletions
  missed while disconnected are still reported (as "these uids are all that exist").
- Watches resume from the last resourceVersion seen (bookmarks included); 410 Gone, a periodic resync
  deadline, or any error leads to a fresh list. Errors back off exponentially (capped) and never end the loop.
- The sink's errors (e.g. NATS down) are handled the same way: nothing observed is considered reported until
  the sink returned, so the relist after the outage republishes it.
- Nothing ends the loop but cancellation: an unexpected error (a bug, an object of a shape nobody foresaw) is
  logged with its traceback, counted, and followed by a relist after the backoff; the cluster's other watches and
  its heartbeat are never taken down with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from bus.errors import BusUnavailable
from kubeapi import ApiGone, Kube, KubeError, NotFound, Resource
from watcher import metrics

logger = logging.getLogger(__name__)


class Sink(Protocol):
    async def listed(self, items: list[dict[str, Any]], resource_version: str) -> None: ...

    async def changed(self, event_type: str, obj: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0


async def observe(
    *,
    kube: Kube,
    resource: Resource,
    sink: Sink,
    namespace: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
    resync_seconds: float = 600.0,
    backoff: Backoff = Backoff(),
) -> None:
    delay = backoff.initial
    what = f"{kube.name}/{resource.kind}" + (f" in {namespace}" if namespace else "")
    while True:
        try:
            items, version = await kube.list(
                resource, namespace=namespace, label_selector=label_selector, field_selector=field_selector
            )
            await sink.listed(items, version)
            delay = backoff.initial
            deadline = time.monotonic() + resync_seconds
            while (remaining := deadline - time.monotonic()) > 0:
                async for event in kube.watch(
                    resource,
                    resource_version=version,
                    namespace=namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    timeout_seconds=max(1, min(300, int(remaining))),
                ):
                    version = event.object.get("metadata", {}).get("resourceVersion", version)
                    if event.type != "BOOKMARK":
                        await sink.changed(event.type, event.object)
        except ApiGone:
            logger.info("%s: resourceVersion expired; listing again", what)
        except NotFound as exc:
            logger.warning("%s: not served by the apiserver (is the CRD installed?): %s", what, exc)
            await _pause(delay)
            delay = min(delay * 2, backoff.maximum)
        except (KubeError, BusUnavailable) as exc:
            logger.warning("%s: %s; listing again in %.1fs", what, exc, delay)
            await _pause(delay)
            delay = min(delay * 2, backoff.maximum)
        except Exception:  # not cancellation: whatever it is, this watch must go on (see the docstring)
            metrics.ERRORS.labels(kind=resource.kind).inc()
            logger.exception("%s: unexpected error; listing again in %.1fs", what, delay)
            await _pause(delay)
            delay = min(delay * 2, backoff.maximum)


async def _pause(seconds: float) -> None:
    await anyio.sleep(seconds)
