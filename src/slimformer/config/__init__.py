"""Typed, validated views of ``params.yaml``.

Each params section loads into one frozen dataclass. Loading checks every key
before any work starts: an unknown key, a wrong type or an out-of-range value
raises :class:`ConfigError` naming the key (``teacher.epochs``) and what is
allowed. Configs round-trip through plain dicts (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from slimformer.config.base import INT_BOUNDS, Section, _join, check
from slimformer.config.deploy import (
    BenchmarkConfig,
    DynamicPTQConfig,
    ExportConfig,
    PTQConfig,
    QATConfig,
    QuantizeConfig,
    ReportConfig,
    SelectConfig,
    StaticPTQConfig,
    TensorRTConfig,
)
from slimformer.config.model import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    PruneDynamicConfig,
    PruneStructuredConfig,
    TeacherConfig,
    TeacherTrainConfig,
    TrainConfig,
)
from slimformer.errors import ConfigError

__all__ = [
    "INT_BOUNDS", "SECTIONS", "AugmentConfig", "BenchmarkConfig", "ConfigError", "DataConfig", "DistillConfig",
    "DynamicPTQConfig", "ExportConfig", "PTQConfig", "PruneDynamicConfig", "PruneStructuredConfig", "QATConfig",
    "QuantizeConfig", "ReportConfig", "Section", "SelectConfig", "StaticPTQConfig", "TeacherConfig",
    "TeacherTrainConfig", "TensorRTConfig", "TrainConfig", "check", "load_all", "load_params", "load_section",
]  # fmt: skip

SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "distill": DistillConfig,
    "prune_structured": PruneStructuredConfig,
    "prune_dynamic": PruneDynamicConfig,
    "quantize": QuantizeConfig,
    "export": ExportConfig,
    "benchmark": BenchmarkConfig,
    "report": ReportConfig,
}


def _check_keys(node: yaml.Node, path: Path, prefix: str = "") -> None:
    """Refuse duplicate and non-string keys at any depth of a composed YAML document.

    PyYAML keeps the last of two equal keys without a word (DVC's ruamel parser refuses
    them), so a stage run by hand would train with ``epochs: 50`` where ``dvc repro`` stops.
    """
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_keys(item, path, f"{prefix}[{i}]")
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": an override is what a merge is for
            continue
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else key_node.tag
            raise ConfigError(f"{path}: line {line}: {_join(prefix, str(shown))}: keys must be strings")
        key = _join(prefix, key_node.value)
        if key_node.value in seen:
            raise ConfigError(
                f"{path}: {key}: duplicate key, on line {seen[key_node.value]} and line {line}; keep one"
            )
        seen[key_node.value] = line
        _check_keys(value_node, path, key)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read ``params.yaml`` as a dict; a missing or malformed file, or a key written twice, is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_keys(node, path)
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - set(SECTIONS))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SECTIONS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{unknown[0]}: unknown params section{hint}; allowed: {', '.join(SECTIONS)}")
    return raw


def load_section(name: str, path: str | Path = "params.yaml") -> Section:
    """Load and validate one section of ``params.yaml`` (the whole file is checked for unknown sections)."""
    raw = load_params(path)
    return SECTIONS[name].from_dict(raw.get(name), prefix=name)


def load_all(path: str | Path = "params.yaml") -> dict[str, Section]:
    """Validate every section of ``params.yaml`` at once; the first problem is a ConfigError."""
    raw = load_params(path)
    return {name: cls.from_dict(raw.get(name), prefix=name) for name, cls in SECTIONS.items()}
