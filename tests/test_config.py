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
