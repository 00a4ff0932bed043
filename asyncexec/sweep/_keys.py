"""The identity of a combination: equal combinations (as execo's sets see them), one key."""

from __future__ import annotations

import contextlib
import decimal
import fractions
import hashlib
import io
import numbers
import pickle
from collections.abc import Hashable
from typing import Any

__all__ = ["combination_key"]


def _by_equality(value: Any) -> Any:
    """``value`` in a form that pickles alike exactly when values compare equal.

    execo keeps combinations in sets: one is another when they are ``==``. So
    1, 1.0, True, ``Fraction(1)`` and ``numpy.int64(1)`` are one level, a
    namedtuple is its tuple, a ``StrEnum`` member is its string. (Format 1 keys
    came from the experiment runner's ``_canonical``, which its fingerprints still use.)
    """
    if isinstance(value, dict):
        items = ((repr(_by_equality(k)), _by_equality(v)) for k, v in value.items())
        return ("__dict__", tuple(sorted(items, key=lambda item: item[0])))
    if isinstance(value, (set, frozenset)):
        return ("__set__", tuple(sorted(repr(_by_equality(v)) for v in value)))
    if isinstance(value, tuple):
        return ("tuple", tuple(_by_equality(v) for v in value))
    if isinstance(value, list):
        return ("list", tuple(_by_equality(v) for v in value))
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass's value, as a plain str
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return _number(value)
    return value


def _number(value: Any) -> Any:
    """One form for all equal numbers: an int if integral, else a float if one is
    equal, else the exact fraction."""
    with contextlib.suppress(Exception):  # NaN, infinities, signalling decimals
        if value == int(value):
            return int(value)
    with contextlib.suppress(Exception):
        if float(value) == value:
            return float(value)
    with contextlib.suppress(Exception):
        exact = fractions.Fraction(value)
        return ("__fraction__", exact.numerator, exact.denominator)
    return value


def combination_key(combination: Hashable) -> str:
    """A stable identity for a combination, the same in every process and run.

    Equal combinations (``==``, as execo's sets see them) have the same key.
    Pickled without the memo: a value used twice must encode like two equal values.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.fast = True  # no memo: equal values, equal bytes
    try:
        pickler.dump(_by_equality(combination))
        pickle.dumps(combination, protocol=4)  # it must also be storable as it is
    except Exception as exc:
        raise TypeError(f"cannot persist the combination {combination!r}: {exc}") from exc
    return hashlib.blake2b(buffer.getvalue(), digest_size=16).hexdigest()
