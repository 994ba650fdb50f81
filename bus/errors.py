"""Errors of the bus: every NATS client failure leaves the package as `BusUnavailable`.

Transient by nature: the caller pauses and retries (NATS restarting, a partition, a slow ack).
"""

from __future__ import annotations

import nats.errors


class BusUnavailable(Exception):
    """NATS/JetStream could not be reached or did not confirm in time."""


NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, OSError, ConnectionError)
"""What the NATS client raises when the server is away or slow; translated to `BusUnavailable` at this package's
edge."""
