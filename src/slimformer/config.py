"""Typed, validated views of ``params.yaml``.

Each params section loads into one frozen dataclass. Loading checks every key
before any work starts: an unknown key, a wrong type or an out-of-range value
raises :class:`ConfigError` naming the key (``teacher.epochs``) and what is
allowed. Configs round-trip through plain dicts (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

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
            return value
    elif tp is float:
        # YAML reads "5e-5" as a string; accept it, as a user would expect.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
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


def check(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise ``ConfigError('<key>: got <value>, allowed: <allowed>')`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, allowed: {allowed}")


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """``data``: where the corpus comes from and how it is split."""

    source: str = "rotten_tomatoes"  # the packaged corpus, or a path to a .csv/.jsonl file
    text_column: str = "text"
    label_column: str = "label"
    labels: tuple[str, ...] = ("rotten", "fresh")  # index = class id
    split: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, val, test
    min_rows_per_class: int = 10
    max_rows: int = 0  # 0 = all; >0 keeps a stratified sample (for quick trials and tests)
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.split) == 3, "split", "three fractions [train, val, test]", list(self.split))
        check(all(0 < f < 1 for f in self.split), "split", "fractions strictly between 0 and 1", list(self.split))
        check(abs(sum(self.split) - 1) < 1e-6, "split", "fractions that sum to 1", list(self.split))
        check(len(self.labels) >= 2, "labels", "at least two label names", list(self.labels))
        check(len(set(self.labels)) == len(self.labels), "labels", "distinct label names", list(self.labels))
        check(self.min_rows_per_class >= 3, "min_rows_per_class", "an integer >= 3", self.min_rows_per_class)
        check(self.max_rows >= 0, "max_rows", "0 (all rows) or a positive integer", self.max_rows)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation settings shared by every training stage."""

    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 64
    group_by_length: bool = True  # batches of similar length: far less padding
    num_threads: int = 2
    nproc: int = 1  # >1 launches DistributedDataParallel workers through torchrun
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(0 < self.lr < 1, "lr", "a number in (0, 1)", self.lr)
        check(0 <= self.weight_decay < 1, "weight_decay", "a number in [0, 1)", self.weight_decay)
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        check(self.max_grad_norm > 0, "max_grad_norm", "a number > 0", self.max_grad_norm)
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)
        check(1 <= self.nproc <= 64, "nproc", "an integer in [1, 64]", self.nproc)


@dataclasses.dataclass(frozen=True)
class TeacherConfig(Section):
    """``teacher``: which pretrained checkpoint to fine-tune, and how."""

    checkpoint: str = "all-MiniLM-L6-v2"  # the packaged MiniLM, or a local BERT-family directory
    train: TrainConfig = TrainConfig()


# --- compression sections (distill, prune_structured, prune_dynamic) go here ---


# --- quantization and export sections (quantize_ptq, quantize_qat, export) go here ---


# --- benchmark and report sections (benchmark, report/select) go here ---


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
}


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read ``params.yaml`` as a dict; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SECTIONS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{unknown[0]}: unknown params section{hint}; allowed: {', '.join(SECTIONS)}")
    return raw


def load_section(name: str, path: str | Path = "params.yaml") -> Section:
    """Load and validate one section of ``params.yaml`` (the whole file is checked for unknown sections)."""
    raw = load_params(path)
    return SECTIONS[name].from_dict(raw.get(name), prefix=name)
