"""Kubernetes quantities: the apiserver's grammar, exactly, and nothing that raises anything but QuantityError."""

from __future__ import annotations

import contextlib
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.quantity import (
    INT4_MAX,
    INT8_MAX,
    QuantityError,
    bytes_of,
    format_quantity,
    gpu_memory_label_bytes,
    millicores,
    parse_quantity,
    whole_count,
)

_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Ei", Decimal(2**60)),
        ("1E", Decimal(10**18)),
        ("2Pi", Decimal(2 * 2**50)),
        ("1E3", Decimal(1000)),
        ("1.5E-3", Decimal("0.0015")),
        ("1e+3", Decimal(1000)),
        ("-1Ei", Decimal(-(2**60))),
        ("+.5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("1n", Decimal("1e-9")),
        ("1u", Decimal("1e-6")),
        ("100m", Decimal("0.1")),
        ("1e1000000", Decimal("1e1000000")),
    ],
)
def test_every_suffix_and_exponent_the_apiserver_accepts(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "garbage",
    ["1e", "1e1.5", " 1", "1Ki ", "1KB", "", "e3", "1ei", "1.2.3", "Ki", "1e99999999999999999", "١", "1" * 2000],
)
def test_garbage_text_is_a_quantity_error(garbage: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(garbage)


@pytest.mark.parametrize("garbage", [None, True, [1], {"a": 1}, float("nan"), float("inf"), b"1", Decimal("NaN")])
def test_garbage_values_are_a_quantity_error(garbage: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(garbage)


def test_huge_values_clamp_to_the_columns_instead_of_building_huge_integers() -> None:
    assert bytes_of("1e1000000") == INT8_MAX
    assert millicores("9Ei") == INT8_MAX
    assert whole_count("3000000000") == INT4_MAX
    assert whole_count("8") == 8
    assert bytes_of("-1Gi") == 0
    assert millicores("1n") == 1  # rounded up, as the scheduler does


@pytest.mark.parametrize(
    ("label", "expected"),
    [("81920", 81920 * 2**20), ("80GB", 0), ("²", 0), ("9" * 400, 0), (["1"], 0), (None, 0), ("-1", 0)],
)
def test_gpu_memory_label_garbage_reads_as_unknown(label: object, expected: int) -> None:
    assert gpu_memory_label_bytes(label) == expected


# ----------------------------------------------------------------------------------------- property-based

_digits = st.text("0123456789", min_size=1, max_size=12)
_number = st.one_of(
    _digits,
    st.builds(lambda a, b: f"{a}.{b}", _digits, st.text("0123456789", max_size=6)),
    st.builds(lambda b: f".{b}", _digits),
)
_sign = st.sampled_from(["", "+", "-"])


@given(sign=_sign, number=_number, suffix=st.sampled_from(sorted(_DECIMAL_SI)))
def test_decimal_si_values_are_exact(sign: str, number: str, suffix: str) -> None:
    value = parse_quantity(f"{sign}{number}{suffix}")
    assert value == Decimal(f"{sign}{number}").scaleb(_DECIMAL_SI[suffix])


@given(sign=_sign, number=_number, suffix=st.sampled_from(sorted(_BINARY_SI)))
def test_binary_si_values_are_exact(sign: str, number: str, suffix: str) -> None:
    value = parse_quantity(f"{sign}{number}{suffix}")
    with localcontext(prec=100):  # exact: the default 28 digits would round
        assert value == Decimal(f"{sign}{number}") * 2 ** _BINARY_SI[suffix]


@given(
    sign=_sign,
    number=_number,
    e=st.sampled_from(["e", "E"]),
    esign=_sign,
    exponent=st.integers(min_value=0, max_value=10**6),
)
def test_decimal_exponents_are_exact(sign: str, number: str, e: str, esign: str, exponent: int) -> None:
    value = parse_quantity(f"{sign}{number}{e}{esign}{exponent}")
    power = -exponent if esign == "-" else exponent
    with localcontext(Emax=10**9, Emin=-(10**9)):
        assert value == Decimal(f"{sign}{number}").scaleb(power)
    assert parse_quantity(format_quantity(value)) == value
    assert 0 <= bytes_of(value) <= INT8_MAX
    assert 0 <= millicores(value) <= INT8_MAX


@settings(max_examples=500)
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_quantity_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert parse_quantity(format_quantity(value)) == value
    assert 0 <= whole_count(value) <= INT4_MAX


@settings(max_examples=300)
@given(st.text(alphabet="0123456789+-.eEKMGTPinumk", max_size=12))
def test_near_miss_text_parses_or_raises_quantity_error(text: str) -> None:
    with contextlib.suppress(QuantityError):
        parse_quantity(text)


@given(st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)))
def test_any_json_value_parses_or_raises_quantity_error(value: object) -> None:
    with contextlib.suppress(QuantityError):
        parse_quantity(value)
