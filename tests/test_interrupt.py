"""A training stage killed mid-way (SIGINT, SIGKILL) loses nothing and resumes on the next run."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, write_jsonl
from pipeline_utils import completed_epoch, env, wait_for_epoch
from slimformer.config import DataConfig
from slimformer.data import prepare


def _stage(tmp_path: Path, tiny_bert_dir: Path, tiny_rows) -> tuple[list[str], Path]:
    data = tmp_path / "data"
    prepare(DataConfig(source=str(write_jsonl(tmp_path / "rows.jsonl", tiny_rows)), min_rows_per_class=5), data)
    params = tmp_path / "params.yaml"
    # batch 2: enough steps per epoch that a signal sent after a checkpoint lands mid-training even on
    # a loaded machine (batch 8 under the full suite: the stage once finished before SIGINT, exit 0)
    train = {"epochs": 3, "batch_size": 2, "max_length": 32, "num_threads": 1}
    params.write_text(yaml.safe_dump({"teacher": {"checkpoint": str(tiny_bert_dir), "train": train}}))
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(REPO / "stages/train_teacher.py"), "--params", str(params), "--data", str(data),
        "--out", str(out / "model"), "--checkpoints", str(out / "ckpt"), "--live", str(out / "live"),
        "--metrics", str(out / "metrics.json"),
    ]  # fmt: skip
    return cmd, out


def _run_until_epoch(cmd: list[str], out: Path, epoch: int, sig: signal.Signals) -> tuple[int, str]:
    """Start the stage and hit it with ``sig`` once ``epoch`` epochs are checkpointed."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epoch(proc, out / "ckpt", epoch, timeout=120)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted; previous outputs are untouched" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists() and not (out / "metrics.json").exists()  # nothing half-written
    return completed_epoch(out / "ckpt"), err


def test_killed_stage_resumes_from_last_epoch(tmp_path: Path, tiny_bert_dir, tiny_rows):
    """SIGINT after epoch 1, rerun and SIGKILL it after epoch 2, rerun to the end: every rerun
    resumes from the last completed epoch and nothing half-written is ever left behind."""
    cmd, out = _stage(tmp_path, tiny_bert_dir, tiny_rows)
    first, _ = _run_until_epoch(cmd, out, 1, signal.SIGINT)
    assert 1 <= first < 3
    second, err = _run_until_epoch(cmd, out, first + 1, signal.SIGKILL)
    assert f"resuming after completed epoch {first}" in err
    assert first < second < 3

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming after completed epoch {second}" in again.stderr
    assert json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == second
    assert (out / "model" / "model.safetensors").is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
