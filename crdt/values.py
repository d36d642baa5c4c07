"""Plain values: what CRDTs hold, how they are checked, ordered and turned into canonical bytes.

An *element* (a set element or a map key) is a `str`, an `int` in the msgpack range, or
`bytes`. `bool` and `float` are refused as elements because `True == 1` and `NaN != NaN` would
make two distinct wire values collide or never match in a dict.

A *plain value* (what registers hold) is None, bool, int, float, str, bytes, or a list/tuple or
dict of plain values; dict keys are str or bytes, so msgpack's default `strict_map_key` decodes them. Plain values are treated as immutable: the package never
copies or mutates them, so callers must not mutate a value after handing it over.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "Element",
    "canonical_bytes",
    "check_element",
    "check_plain",
    "element_order",
    "is_element",
]

INT_MIN = -(2**63)
"""Smallest integer msgpack can carry (int 64)."""
INT_MAX = 2**64 - 1
"""Largest integer msgpack can carry (uint 64)."""

Element = str | int | bytes

_RANK = {int: 0, str: 1, bytes: 2}


def is_element(x: object) -> bool:
    """True if `x` may be a set element or map key."""
    t = type(x)
    if t is str:
        return x.isascii() or _utf8_ok(x)  # type: ignore[attr-defined]
    if t is bytes:
        return True
    return t is int and INT_MIN <= x <= INT_MAX  # type: ignore[operator]


def _utf8_ok(text: str) -> bool:
    """False for strings msgpack cannot encode (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_element(x: object, what: str = "element") -> None:
    """Raise `ValueError` unless `x` is an element."""
    if not is_element(x):
        raise ValueError(f"{what} must be str (UTF-8), bytes or a 64-bit int, got {type(x).__name__}: {x!r:.60}")


def element_order(x: Element) -> tuple[int, Any]:
    """A deterministic sort key for elements of mixed types (ints, then str, then bytes)."""
    return (_RANK[type(x)], x)


def check_plain(value: object, depth_max: int, elements_max: int) -> int:
    """Check a plain value within limits; return an estimate of its msgpack size in bytes.

    Raise `ValueError` saying what is wrong. Iterative, so deep garbage cannot exhaust the stack.
    """
    size = 0
    count = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > elements_max:
            raise ValueError(f"plain value has more than {elements_max} items")
        t = type(item)
        if item is None or t is bool:
            size += 1
        elif t is int:
            if not INT_MIN <= item <= INT_MAX:  # type: ignore[operator]
                raise ValueError(f"integer {item} is outside the 64-bit msgpack range")
            size += 9
        elif t is float:
            size += 9
        elif t is str:
            try:
                size += len(item.encode("utf-8")) + 5  # type: ignore[attr-defined]
            except UnicodeEncodeError:
                raise ValueError("string is not valid UTF-8 (lone surrogate)") from None
        elif t is bytes:
            size += len(item) + 5  # type: ignore[arg-type]
        elif t is list or t is tuple:
            if depth >= depth_max:
                raise ValueError(f"plain value nests deeper than {depth_max}")
            size += 5
            stack.extend((x, depth + 1) for x in item)  # type: ignore[attr-defined]
        elif t is dict:
            if depth >= depth_max:
                raise ValueError(f"plain value nests deeper than {depth_max}")
            size += 5
            for k, v in item.items():  # type: ignore[attr-defined]
                if type(k) is not str and type(k) is not bytes:
                    raise ValueError(f"dict keys must be str or bytes (msgpack strict_map_key), got {type(k).__name__}")
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        else:
            raise ValueError(f"{t.__name__} is not a plain value (None/bool/int/float/str/bytes/list/dict)")
    return size


def canonical_bytes(value: object) -> bytes:
    """Deterministic bytes for a checked plain value: equal values give equal bytes.

    Used for digests and as the last tie-break of last-writer-wins joins. Dict entries are
    ordered by the canonical bytes of their keys; lists and tuples encode alike.
    """
    out = bytearray()
    _canon(value, out)
    return bytes(out)


def _canon(value: object, out: bytearray) -> None:
    t = type(value)
    if value is None:
        out += b"N"
    elif t is bool:
        out += b"T" if value else b"F"
    elif t is int:
        text = str(value).encode()
        out += b"i" + _len(len(text)) + text
    elif t is float:
        out += b"f" + struct.pack(">d", value)
    elif t is str:
        data = value.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        out += b"s" + _len(len(data)) + data
    elif t is bytes:
        out += b"b" + _len(len(value)) + value  # type: ignore[arg-type,operator]
    elif t is list or t is tuple:
        out += b"l" + _len(len(value))  # type: ignore[arg-type]
        for item in value:  # type: ignore[attr-defined]
            _canon(item, out)
    elif t is dict:
        pairs = sorted((canonical_bytes(k), v) for k, v in value.items())  # type: ignore[attr-defined]
        out += b"d" + _len(len(pairs))
        for kb, v in pairs:
            out += kb
            _canon(v, out)
    else:
        raise ValueError(f"{t.__name__} is not a plain value")


def _len(n: int) -> bytes:
    return n.to_bytes(4, "big")
