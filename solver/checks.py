"""Field validation shared by every loader: numbers, lists and mappings with errors that say where."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from melange.solver.errors import InputError


def read_text(path: Path, what: str = "file") -> str:
    """A file's text, decoded as UTF-8; an unreadable or non-UTF-8 file raises naming the path."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(str(path), f"cannot read {what}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise InputError(str(path), f"not UTF-8 text (byte {error.start} is 0x{error.object[error.start]:02x})",
                         f"a UTF-8 {what}") from None


def require_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """Return `value` if it is a mapping, else raise naming `where`."""
    if not isinstance(value, Mapping):
        raise InputError(where, f"expected a mapping, got {type(value).__name__}")
    return value


def require_keys(data: Mapping[str, Any], where: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Reject missing required keys and unknown keys, so typos do not pass silently."""
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(where, f"missing field {missing[0]!r}", f"fields {sorted(set(required) | set(optional))}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", "unknown field", f"fields {sorted(set(required) | set(optional))}")


def number(value: Any, where: str, *, minimum: float | None = None, strict_minimum: bool = False,
           maximum: float | None = None) -> float:
    """Return `value` as a finite float within bounds, else raise naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(where, f"expected a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise InputError(where, f"must be a finite number, got {value!r}")
    if minimum is not None:
        if strict_minimum and result <= minimum:
            raise InputError(where, f"must be > {minimum:g}, got {value!r}")
        if not strict_minimum and result < minimum:
            raise InputError(where, f"must be >= {minimum:g}, got {value!r}")
    if maximum is not None and result > maximum:
        raise InputError(where, f"must be <= {maximum:g}, got {value!r}")
    return result


def integer(value: Any, where: str, *, minimum: int | None = None) -> int:
    """Return `value` as an int (a float with no fraction is accepted), else raise naming `where`."""
    if isinstance(value, bool):
        raise InputError(where, f"expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InputError(where, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(where, f"must be >= {minimum}, got {value}")
    return value


def text(value: Any, where: str) -> str:
    """Return a non-empty string, else raise naming `where`."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(where, f"expected a non-empty string, got {value!r}")
    return value.strip()


def sequence(value: Any, where: str, *, length: int | None = None, nonempty: bool = True) -> Sequence[Any]:
    """Return `value` if it is a list (of the given length), else raise naming `where`."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InputError(where, f"expected a list, got {type(value).__name__}")
    if nonempty and len(value) == 0:
        raise InputError(where, "must not be empty")
    if length is not None and len(value) != length:
        raise InputError(where, f"has {len(value)} entries, expected {length}")
    return value
