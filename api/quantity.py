"""Kubernetes resource quantities as exact numbers.

Guarantees:
- `parse_quantity` accepts exactly the text the apiserver's ``resource.ParseQuantity`` accepts: an optionally
  signed decimal number followed by one suffix — decimal SI (``n u m k M G T P E`` or none), binary SI (``Ki Mi Gi Ti
  Pi Ei``) or an integer decimal exponent (``e3``, ``E-3``: an ``E`` followed by digits is an exponent, ``E`` alone
  is exa). It returns the exact `Decimal`, however large (``1e1000000`` costs no more than ``1``). Anything else —
  other text, whitespace, a fractional exponent, a bool, a list, NaN — raises `QuantityError` (a `ValueError`)
  naming the input; never another exception type.
- The integer views (`millicores`, `bytes_of`, `whole_count`) are clamped to the range of the columns and fields
  that hold them (``[0, INT8_MAX]``, or ``[0, INT4_MAX]`` for counts), so a quantity beyond any real machine is
  read as "more than anything has" instead of failing an insert or building a billion-digit integer.
Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

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

# The grammar the apiserver parses (k8s.io/apimachinery resource.ParseQuantity): the exponent is an integer there
# (strconv.ParseInt), even though the regular expression controller-gen puts in CRDs allows a fraction.
_GRAMMAR = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>[KMGTPE]i)|[eE](?P<exponent>[+-]?[0-9]+)|(?P<decimal>[numkMGTPE]?))",
    re.ASCII,
)
# The regular expression for CRD patterns (kept for schema generation; the parser above is the stricter one).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_MAX_TEXT = 1024
"""Longer text is refused before parsing: no real quantity is this long, and it bounds the work per value."""
_MAX_EXPONENT = 10**15
"""Exponents are bounded far beyond any meaning (the apiserver reads them as 64-bit integers)."""
_EXACT = Context(prec=_MAX_TEXT + 64, Emax=10**17, Emin=-(10**17))
"""Enough digits that multiplying by a suffix is exact for every accepted text."""


class QuantityError(ValueError):
    """The value is not a Kubernetes quantity; the message names it."""


def parse_quantity(value: object) -> Decimal:
    """Return the quantity's exact value in base units (cores, bytes, GPUs)."""
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise QuantityError(f"not a quantity: {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuantityError(f"not a quantity: {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise QuantityError(f"not a quantity: {value!r}")
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@lru_cache(maxsize=4096)
def _parse_text(text: str) -> Decimal:
    # Snapshots repeat the same few quantities ("96", "1Ti", "8") millions of times.
    if len(text) > _MAX_TEXT or not (match := _GRAMMAR.fullmatch(text)):
        raise QuantityError(f"not a Kubernetes quantity: {_shown(text)} (expected e.g. 500m, 2, 4Gi, 1e3)")
    number = Decimal(match["number"])
    if (exponent := match["exponent"]) is not None:
        power = int(exponent)
        if abs(power) > _MAX_EXPONENT:
            raise QuantityError(f"not a Kubernetes quantity: {_shown(text)} (exponent out of range)")
        try:
            return number.scaleb(power, _EXACT)
        except InvalidOperation as exc:  # unreachable within the bounds above; kept to honour the contract
            raise QuantityError(f"not a Kubernetes quantity: {_shown(text)}") from exc
    suffix = match["binary"] or match["decimal"] or ""
    return _EXACT.multiply(number, _SUFFIXES[suffix])


def add_quantities(*values: Decimal) -> Decimal:
    """Exact sum of parsed quantities (the default decimal context would round, or overflow on huge ones)."""
    total = Decimal(0)
    for value in values:
        total = _EXACT.add(total, value)
    return total


def format_quantity(value: Decimal) -> str:
    """Text `parse_quantity` reads back as exactly `value`: plain digits for everyday sizes, an exponent for huge
    or tiny ones (never a million-digit string)."""
    value = _EXACT.plus(value).normalize(_EXACT)
    if value == 0:
        return "0"
    if -30 <= value.adjusted() <= 30:
        return format(value, "f")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: parse_quantity never returns NaN or infinity
    return f"{'-' if sign else ''}{''.join(map(str, digits))}e{exponent}"


def is_quantity(value: object) -> bool:
    try:
        parse_quantity(value)
    except QuantityError:
        return False
    return True


def _clamped(value: Decimal, maximum: int) -> int:
    if value <= 0:
        return 0
    if value >= maximum:
        return maximum
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def millicores(value: object, *, maximum: int = INT8_MAX) -> int:
    """CPU quantity in whole millicores, rounded up as the scheduler does; None is zero; clamped to [0, maximum]."""
    if value is None:
        return 0
    return _clamped(parse_quantity(value).scaleb(3, _EXACT), maximum)


def bytes_of(value: object, *, maximum: int = INT8_MAX) -> int:
    """Memory/storage quantity in whole bytes, rounded up; None is zero; clamped to [0, maximum]."""
    if value is None:
        return 0
    return _clamped(parse_quantity(value), maximum)


def whole_count(value: object, *, maximum: int = INT4_MAX) -> int:
    """A countable resource (GPUs) as an integer, rounded up; None is zero; clamped to [0, maximum]."""
    return bytes_of(value, maximum=maximum)


def gpu_memory_label_bytes(value: object) -> int:
    """GPU feature discovery's ``nvidia.com/gpu.memory`` label (MiB, decimal digits) in bytes; anything else a
    mislabelled node may carry (text, a fraction, a list, a 400-digit number) reads as 0, unknown memory."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 18:
        return 0
    return min(int(value) * 2**20, INT8_MAX)


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
