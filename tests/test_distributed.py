"""Scale-out: the teacher stage relaunches itself under torchrun with 2 gloo workers on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, write_jsonl
from pipeline_utils import env
from slimformer.config import DataConfig
from slimformer.data import prepare


def test_train_teacher_stage_runs_two_ddp_processes(tmp_path: Path, tiny_bert_dir, tiny_rows):
    data = tmp_path / "data"
    prepare(DataConfig(source=str(write_jsonl(tmp_path / "rows.jsonl", tiny_rows)), min_rows_per_class=5), data)
    params = tmp_path / "params.yaml"
    train = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "max_length": 32, "num_threads": 1, "nproc": 2}
    params.write_text(yaml.safe_dump({"teacher": {"checkpoint": str(tiny_bert_dir), "train": train}}))
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(REPO / "stages/train_teacher.py"), "--params", str(params), "--data", str(data),
        "--out", str(out / "model"), "--checkpoints", str(out / "ckpt"), "--live", str(out / "live"),
        "--metrics", str(out / "metrics.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching 2 DistributedDataParallel workers" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and 0 <= metrics["test_accuracy"] <= 1
    assert (out / "model/model.safetensors").is_file()
    state = json.loads((out / "ckpt/state.json").read_text())
    assert state["epoch"] == 2
