"""End to end: the real `dvc repro` on a tiny params profile, in a temporary copy of the repo."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_utils import REPO, completed_epoch, copy_repo, env, run, wait_for_epoch
from slimformer.engines import load_engine
from slimformer.modeling import load_tokenizer

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


@pytest.mark.parametrize(
    "misspell, message",
    [
        (lambda p: p["teacher"]["train"].update(epohcs=p["teacher"]["train"].pop("epochs")),
         "teacher.train.epohcs: unknown key (did you mean teacher.train.epochs?)"),
        # no stage's params list names these: only check_params (params: params.yaml) sees them
        (lambda p: p.update(becnhmark=p.pop("benchmark")), "becnhmark: unknown params section (did you mean benchmark?)"),
        (lambda p: p["quantize"].update(qatt=p["quantize"].pop("qat")), "quantize.qatt: unknown key (did you mean quantize.qat?)"),
    ],
    ids=["key", "section", "untracked-key"],
)  # fmt: skip
def test_misspelled_key_fails_naming_it(repo: Path, misspell, message):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    misspell(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = run(["dvc", "repro"], repo, check=False)
        assert proc.returncode != 0
        assert message in proc.stderr + proc.stdout
        assert "Running stage 'check_params'" in proc.stdout and "Running stage 'prepare'" not in proc.stdout
    finally:
        run(["git", "checkout", "--", "."], repo)
    # check_params failed before any other stage ran, so no stage cleared its outs
    assert (repo / "artifacts/models/teacher/model.safetensors").is_file()
    assert "up to date" in run(["dvc", "status"], repo).stdout


def _check_and_run(engine: Path) -> None:
    """What the README asks of a downloaded engine: every sha256 matches, then it serves a sentence."""
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["files"] and manifest["status"] == "ok"
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((engine / name).read_bytes()).hexdigest() == digest, name
    # trust_torchscript: this test's own pipeline built the engine (a TorchScript one may be selected on tiny params)
    runner, tok = load_engine(engine, num_threads=1, trust_torchscript=True), load_tokenizer(engine)
    enc = tok(["a wonderful, moving film"], return_tensors="np")
    logits = runner(enc["input_ids"].astype("int64"), enc["attention_mask"].astype("int64"))
    assert logits.shape == (1, 2) and np.isfinite(logits).all()


def test_push_clone_and_download_the_best_engine(repo: Path, tmp_path: Path):
    # The default remote, pointed at a temporary directory instead of ~/.cache, and committed:
    # `dvc get` reads the remote from the repository it downloads from.
    run(["dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")], repo)
    run(["git", "commit", "-qam", "remote for this test"], repo)
    run(["dvc", "push"], repo)
    # A version and a stage for the dvc.yaml artifact `best-engine`, as GTO git tags (README).
    run(["gto", "register", "best-engine", "--version", "v0.1.0"], repo)
    run(["gto", "assign", "best-engine", "--version", "v0.1.0", "--stage", "prod"], repo)
    clone = tmp_path / "clone"  # a fresh clone has no DVC cache: everything below comes from the remote
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)

    run(["dvc", "get", str(clone), "artifacts/engines/best", "-o", str(tmp_path / "best")], tmp_path)
    _check_and_run(tmp_path / "best")
    run(["dvc", "artifacts", "get", str(clone), "best-engine", "--rev", "v0.1.0", "-o", str(tmp_path / "v010")], tmp_path)
    _check_and_run(tmp_path / "v010")
    run(["dvc", "artifacts", "get", str(clone), "best-engine", "--stage", "prod", "-o", str(tmp_path / "prod")], tmp_path)
    _check_and_run(tmp_path / "prod")


def _repro_until_epoch(repo: Path, ckpt: Path, log: Path, epoch: int, sig: signal.Signals) -> tuple[int, str]:
    """`dvc repro train_teacher`, hit with ``sig`` once ``epoch`` epochs are checkpointed."""
    e = env() | {"PYTHONPATH": str(repo / "src")}
    with log.open("w") as f:  # a file, not a pipe: a full pipe would stall the stage
        proc = subprocess.Popen(["dvc", "repro", "train_teacher"], cwd=repo, env=e, stdout=f,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    wait_for_epoch(proc, ckpt, epoch, log=log)
    os.killpg(proc.pid, sig)  # SIGINT: what Ctrl-C in a terminal does; SIGKILL: an OOM killer or a lost node
    proc.wait(timeout=120)
    assert proc.returncode != 0
    return completed_epoch(ckpt), log.read_text()


def test_dvc_repro_killed_mid_stage_then_rerun(repo: Path, tmp_path: Path):
    """Ctrl-C (SIGINT to the whole process group) during train_teacher, `dvc repro` again and SIGKILL
    it, then `dvc repro` once more: each rerun resumes from the last completed epoch, nothing
    half-written appears, and the committed run's outs come back intact from the DVC cache."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # short epochs, but enough steps in each that the signal lands mid-training even when this
    # test's process waits for a core while the stage trains (batch 32: it once finished first, exit 0)
    params["teacher"]["train"] |= {"epochs": 3, "max_length": 16, "batch_size": 8}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ckpt = repo / "artifacts/checkpoints/teacher"
    shutil.move(ckpt, tmp_path / "ckpt")  # no earlier checkpoint to resume from (put back at the end)
    try:
        first, out = _repro_until_epoch(repo, ckpt, tmp_path / "sigint.log", 1, signal.SIGINT)
        assert 1 <= first < 3
        assert "interrupted; previous outputs are untouched" in out
        assert not (repo / "artifacts/models/teacher").exists()  # DVC cleared the out; nothing half-written

        second, out = _repro_until_epoch(repo, ckpt, tmp_path / "sigkill.log", first + 1, signal.SIGKILL)
        assert f"resuming after completed epoch {first}" in out
        assert first < second < 3
        assert not (repo / "artifacts/models/teacher").exists()

        again = run(["dvc", "repro", "train_teacher"], repo)
        assert f"resuming after completed epoch {second}" in again.stdout + again.stderr
        assert json.loads((repo / "artifacts/metrics/teacher.json").read_text())["resumed_from_epoch"] == second
        assert (repo / "artifacts/models/teacher/model.safetensors").is_file()
        assert not [p for p in (repo / "artifacts").rglob("*") if p.name.endswith(".tmp")]
    finally:
        run(["git", "reset", "-q", "--hard"], repo)  # autostage put the new dvc.lock in the index
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.move(tmp_path / "ckpt", ckpt)
    run(["dvc", "checkout", "--force"], repo)  # the committed run's outs come back from the cache intact
    assert "up to date" in run(["dvc", "status"], repo).stdout
