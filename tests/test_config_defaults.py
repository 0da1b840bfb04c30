"""One source of defaults: every dataclass default equals the value the shipped params.yaml sets."""

from __future__ import annotations

from pathlib import Path

from slimformer.config import SECTIONS, load_params

ROOT = Path(__file__).resolve().parents[1]


def _diffs(default: dict, shipped: dict, prefix: str) -> list[str]:
    out = []
    for key, value in default.items():
        where = f"{prefix}.{key}"
        if key not in shipped:
            out.append(f"{where}: params.yaml does not set it (default {value!r})")
        elif isinstance(value, dict):
            out += _diffs(value, shipped[key], where)
        elif value != shipped[key]:
            out.append(f"{where}: config.py default {value!r} != params.yaml {shipped[key]!r}")
    return out


def test_config_defaults_equal_the_shipped_params_yaml():
    """A key left out of a user's params.yaml behaves as the shipped file says, and every knob is visible there."""
    raw = load_params(ROOT / "params.yaml")
    problems = []
    for name, cls in SECTIONS.items():
        shipped = cls.from_dict(raw[name], prefix=name).to_dict()
        problems += _diffs(cls().to_dict(), shipped, name)
    assert not problems, "\n".join(problems)
