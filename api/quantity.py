"""Kubernetes resource quantities as exact numbers.

Guarantees: `parse_quantity` accepts exactly the canonical Kubernetes quantity grammar (``500m``, ``2``, ``4Gi``,
``1e3``) and returns an exact `Decimal`; anything else raises `ValueError` naming the text. Pure: no I/O.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache

_SUFFIXES: dict[str, Decimal] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

# The same grammar the apiserver uses for resource.Quantity (and controller-gen puts in CRD patterns).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity's exact value in base units (cores, bytes, GPUs)."""
    if isinstance(value, str):
        return _parse_text(value)
    return _parse(value)


@lru_cache(maxsize=4096)
def _parse_text(value: str) -> Decimal:
    # Snapshots repeat the same few quantities ("96", "1Ti", "8") millions of times.
    return _parse(value)


def _parse(value: str | int | float) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = value.strip()
    if not re.match(QUANTITY_PATTERN, text):
        raise ValueError(f"not a Kubernetes quantity: {value!r} (expected e.g. 500m, 2, 4Gi)")
    match = _NUMBER.match(text)
    if match is None:  # unreachable after the pattern check; keeps the type checker honest
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
        return Decimal(number) * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError) as exc:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from exc


def millicores(value: str | int | float | None) -> int:
    """CPU quantity in whole millicores, rounded up as the scheduler does; None is zero."""
    if value is None:
        return 0
    return int((parse_quantity(value) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def bytes_of(value: str | int | float | None) -> int:
    """Memory/storage quantity in whole bytes, rounded up; None is zero."""
    if value is None:
        return 0
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(value: int) -> str:
    """Human form for messages: the largest binary unit that divides the value, else Mi with a decimal."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    if value >= 2**30:
        return f"{value / 2**30:.1f}Gi"
    return f"{value}"


def format_millicores(value: int) -> str:
    return f"{value // 1000}" if value % 1000 == 0 else f"{value}m"
