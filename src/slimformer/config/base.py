"""The machinery of every params section: strict typed loading, did-you-mean, range checks.

Why not pydantic (installed through gto): the messages this project promises (``teacher.epochs:
got 0, allowed: an integer >= 1``; ``unknown key (did you mean teacher.epochs?)``) would need a
custom error translator over pydantic's ValidationError plus a did-you-mean pass over
``extra="forbid"`` errors, and every section's ``__post_init__`` range checks would become
validators: more code than the ~150 lines below, for the same behaviour. Plain frozen dataclasses
also keep ``to_dict``/``from_dict`` and ``dataclasses.replace`` as the rest of the code uses them.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, TypeVar

from slimformer.errors import ConfigError

C = TypeVar("C", bound="Section")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0])
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


# Integer fields bounded wherever they appear, by field name: a seed must be one numpy and
# torch accept (numpy refuses -1 and 2**32), and a thread count beyond any machine's cores
# is a typo that would otherwise reach torch.set_num_threads.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**32 - 1),
    "num_threads": (1, 1024),
}


def _check_int_bounds(key: str, value: int) -> int:
    bounds = INT_BOUNDS.get(key.rsplit(".", 1)[-1])
    if bounds is not None:
        lo, hi = bounds
        check(lo <= value <= hi, key, f"an integer in [{lo}, {hi}]", value)
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
    elif origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    elif tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return tp.from_dict(value, prefix=key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_int_bounds(key, value)
    elif tp is float:
        # YAML reads "5e-5" as a string; accept it, as a user would expect.
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            check(math.isfinite(number), key, "a finite number (not .inf or .nan)", value)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error, not a user error
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every params section: strict dict loading and range checks."""

    @classmethod
    def from_dict(cls: type[C], raw: dict[str, Any] | None, prefix: str = "") -> C:
        raw = {} if raw is None else raw
        name = prefix or cls.__name__
        if not isinstance(raw, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {raw!r}")
        keys = [k for k in raw if not isinstance(k, str)]
        if keys:
            raise ConfigError(f"{_join(prefix, repr(keys[0]))}: keys must be strings, got {type(keys[0]).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(
                f"{_join(prefix, key)}: unknown key{hint}; allowed keys: {', '.join(sorted(fields))}"
            )
        values = {k: _coerce(_join(prefix, k), v, hints[k]) for k, v in raw.items()}
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{_join(prefix, str(e))}") from None
        except TypeError as e:  # missing required field
            raise ConfigError(f"{name}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Section):
                return v.to_dict()
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def check(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise ``ConfigError('<key>: got <value>, allowed: <allowed>')`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, allowed: {allowed}")
