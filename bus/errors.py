"""Errors of the bus: every NATS client failure leaves the package as `BusUnavailable`.

Transient by nature: the caller pauses and retries (NATS restarting, a partition, a slow ack).
"""

from __future__ import annotations

import nats.errors


class BusUnavailable(Exception):
    """NATS/JetStream could not be reached or did not confirm in time."""


class PayloadTooLarge(Exception):
    """A message larger than the server's max_payload: permanent for that message, never a reason to retry."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the NATS server's max_payload of {limit} bytes")
        self.size = size
        self.limit = limit


NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, OSError, ConnectionError)
"""What the NATS client raises when the server is away or slow; translated to `BusUnavailable` at this package's
edge."""
