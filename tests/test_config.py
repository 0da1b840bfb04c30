from pathlib import Path

import pytest
import yaml

from slimformer.config import SECTIONS, DataConfig, TeacherConfig, TrainConfig, load_all, load_params, load_section
from slimformer.errors import ConfigError

from conftest import REPO


def test_shipped_params_load_and_round_trip():
    raw = load_params(REPO / "params.yaml")
    for name, cls in SECTIONS.items():
        cfg = cls.from_dict(raw.get(name), prefix=name)
        assert cls.from_dict(cfg.to_dict(), prefix=name) == cfg


def test_defaults_equal_shipped_data_section():
    assert load_section("data", REPO / "params.yaml") == DataConfig()


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"epohcs": 3}, "teacher.train.epohcs: unknown key (did you mean teacher.train.epochs?)"),
        ({"epochs": "two"}, "teacher.train.epochs: got 'two', expected an integer"),
        ({"epochs": -1}, "teacher.train.epochs: got -1, allowed: an integer >= 0 (0: no training)"),
        ({"lr": 3}, "teacher.train.lr: got 3.0, allowed: a number in (0, 1)"),
        ({"group_by_length": "yes"}, "teacher.train.group_by_length: got 'yes', expected true or false"),
        ({"max_length": 4}, "teacher.train.max_length"),
    ],
)
def test_bad_teacher_train_values_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as e:
        TeacherConfig.from_dict({"train": raw}, prefix="teacher")
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"split": [0.8, 0.1]}, "data.split"),
        ({"split": [0.8, 0.3, 0.1]}, "sum to 1"),
        ({"labels": ["a"]}, "data.labels"),
        ({"labels": ["a", "a"]}, "distinct"),
        ({"max_rows": -1}, "data.max_rows"),
        ({"seed": 1.5}, "data.seed: got 1.5, expected an integer"),
        ({"sourse": "x.csv"}, "data.sourse: unknown key (did you mean data.source?)"),
    ],
)
def test_bad_data_values_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as e:
        DataConfig.from_dict(raw, prefix="data")
    assert fragment in str(e.value)


def test_float_strings_are_accepted_as_numbers():
    assert TrainConfig.from_dict({"lr": "5e-5"}).lr == 5e-5


def test_unknown_section_and_bad_file(tmp_path: Path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"teachr": {}}))
    with pytest.raises(ConfigError, match="teachr: unknown params section .did you mean teacher"):
        load_section("teacher", p)
    p.write_text("teacher: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_section("teacher", p)
    with pytest.raises(ConfigError, match="params file not found"):
        load_section("teacher", tmp_path / "missing.yaml")


def test_load_all_checks_every_section(tmp_path: Path):
    raw = load_params(REPO / "params.yaml")
    assert set(load_all(REPO / "params.yaml")) == set(SECTIONS)
    raw["quantize"]["qatt"] = raw["quantize"].pop("qat")  # a key no stage's params list names
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"quantize\.qatt: unknown key \(did you mean quantize\.qat\?\)"):
        load_all(p)


def test_check_params_stage_guards_the_whole_pipeline():
    """Stage params name sections, so only a stage tracking the whole file sees a misspelled
    section; ``prepare`` (upstream of every other stage) depends on its out."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    check = stages["check_params"]
    assert {"params.yaml": None} in check["params"]
    (out,) = check["outs"][0]  # {path: {persist: true}}
    assert out in stages["prepare"]["deps"]


# ------------------------------------------------------- what a hand-edited params.yaml brings


def _params(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "text, message",
    [
        ("teacher:\n  train:\n    epochs: 2\n    lr: 5.0e-5\n    epochs: 50\n",
         "teacher.train.epochs: duplicate key, on line 3 and line 5; keep one"),
        ("data:\n  seed: 0\nteacher: {}\ndata:\n  seed: 1\n", "data: duplicate key, on line 1 and line 4"),
        ("data:\n  labels: [a, b]\n  1: x\n", "line 3: data.1: keys must be strings"),
        ("data:\n  seed: 0\n  [a, b]: x\n", "line 3: data.tag:yaml.org,2002:seq: keys must be strings"),
    ],
    ids=["duplicate-nested", "duplicate-section", "int-key", "list-key"],
)
def test_params_file_keys_are_strict(tmp_path: Path, text: str, message: str):
    p = _params(tmp_path, text)
    for load in (load_params, load_all, lambda path: load_section("data", path)):
        with pytest.raises(ConfigError) as e:
            load(p)
        assert str(e.value).startswith(f"{p}: ") and message in str(e.value), str(e.value)


def test_yaml_merge_keys_may_override(tmp_path: Path):
    p = _params(tmp_path, "data:\n  <<: {seed: 1, max_rows: 5}\n  seed: 2\n")
    assert load_section("data", p) == DataConfig(seed=2, max_rows=5)


def test_mixed_type_keys_are_a_config_error_not_a_type_error():
    with pytest.raises(ConfigError, match=r"teacher\.train\.1: keys must be strings, got int"):
        TeacherConfig.from_dict({"train": {"epochs": 2, 1: 3}}, prefix="teacher")


@pytest.mark.parametrize(
    "section, raw, message",
    [
        ("distill", {"hidden_weight": float("inf")}, "distill.hidden_weight: got inf, allowed: a finite number"),
        ("teacher", {"train": {"max_grad_norm": float("inf")}}, "teacher.train.max_grad_norm: got inf, allowed: a finite"),
        ("quantize", {"qat": {"temperature": float("inf")}}, "quantize.qat.temperature: got inf, allowed: a finite"),
        ("teacher", {"train": {"lr": float("nan")}}, "teacher.train.lr: got nan, allowed: a finite"),
        ("teacher", {"train": {"lr": "-inf"}}, "teacher.train.lr: got '-inf', allowed: a finite"),
        ("data", {"seed": -1}, "data.seed: got -1, allowed: an integer in [0, 4294967295]"),
        ("data", {"seed": 2**32}, "data.seed: got 4294967296, allowed: an integer in [0, 4294967295]"),
        ("teacher", {"train": {"seed": -1}}, "teacher.train.seed: got -1, allowed: an integer in [0, 4294967295]"),
        ("distill", {"augment": {"seed": -3}}, "distill.augment.seed: got -3"),
        ("teacher", {"train": {"num_threads": 100_000_000}}, "teacher.train.num_threads: got 100000000, allowed: an integer in [1, 1024]"),
        ("benchmark", {"num_threads": 0}, "benchmark.num_threads: got 0, allowed: an integer in [1, 1024]"),
        ("export", {"num_threads": 2048}, "export.num_threads: got 2048"),
    ],
)
def test_non_finite_numbers_and_out_of_range_ints_name_the_key(section, raw, message):
    with pytest.raises(ConfigError) as e:
        SECTIONS[section].from_dict(raw, prefix=section)
    assert message in str(e.value), str(e.value)


def test_yaml_inf_in_params_file_is_refused_by_check_params_loader(tmp_path: Path):
    p = _params(tmp_path, "distill:\n  hidden_weight: .inf\n")
    with pytest.raises(ConfigError, match=r"distill\.hidden_weight: got inf, allowed: a finite number"):
        load_all(p)
    assert TrainConfig.from_dict({"seed": 2**32 - 1, "num_threads": 1024}).seed == 2**32 - 1  # the bounds are inclusive
