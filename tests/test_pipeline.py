"""End to end: the real `dvc repro` on a tiny params profile, in a temporary copy of the repo."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline_utils import REPO, copy_repo, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    overrides = yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text())
    dest = copy_repo(tmp_path_factory.mktemp("repo"), overrides)
    run(["dvc", "repro"], dest)
    run(["git", "add", "-A"], dest)  # what a user commits: dvc.lock, metrics, plots (autostaged)
    run(["git", "commit", "-qm", "repro"], dest)
    return dest


def test_repro_writes_every_out_and_metric(repo: Path):
    card = json.loads((repo / "artifacts/data/card.json").read_text())
    assert card["rows"] == 400 and sum(card["splits"][s]["rows"] for s in ("train", "val", "test")) == 400
    teacher = json.loads((repo / "artifacts/metrics/teacher.json").read_text())
    assert 0.0 <= teacher["test_accuracy"] <= 1.0 and teacher["params"]["total"] > 22_000_000
    assert (repo / "artifacts/models/teacher/model.safetensors").is_file()
    assert list((repo / "artifacts/live/teacher/plots/metrics").glob("*.tsv"))
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "test_accuracy" in shown


def test_second_repro_is_up_to_date(repo: Path):
    out = run(["dvc", "repro"], repo).stdout
    assert "is up to date" in out or "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_misspelled_key_fails_naming_it(repo: Path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["train"]["epohcs"] = params["teacher"]["train"].pop("epochs")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = run(["dvc", "repro"], repo, check=False)
        assert proc.returncode != 0
        assert "teacher.train.epohcs: unknown key (did you mean teacher.train.epochs?)" in proc.stderr + proc.stdout
    finally:
        run(["git", "checkout", "--", "."], repo)
    # DVC clears a stage's outs before running it; the last good ones stay in its cache
    # (models) and in git (metrics files, cache: false).
    run(["dvc", "checkout"], repo)
    assert (repo / "artifacts/models/teacher/model.safetensors").is_file()
    assert "up to date" in run(["dvc", "status"], repo).stdout
