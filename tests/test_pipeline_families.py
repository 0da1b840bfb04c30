"""End to end for a non-BERT family: the real `dvc repro` on the tiny profile with a tiny
random-initialised RoBERTa (byte-level BPE tokenizer) as ``teacher.checkpoint``, and an
unsupported family (gpt2) refused by the first stage within seconds."""

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from family_helpers import make_checkpoint

from pipeline_utils import REPO, copy_repo, run
from slimformer.engines import verify_engine

pytestmark = pytest.mark.e2e

VARIANTS = (
    "teacher_fp32_torchscript", "teacher_fp32_onnx", "final_fp32_torchscript", "final_int8_torchscript",
    "final_fp32_onnx", "final_fp32_ortopt", "ptq_dynamic_int8_onnx", "ptq_dynamic_int8_ortopt",
    "ptq_static_int8_onnx", "ptq_static_int8_qdq_onnx", "qat_int8_onnx",
)  # fmt: skip


@pytest.fixture(scope="module")
def roberta_repo(tmp_path_factory) -> Path:
    ckpt = make_checkpoint("roberta", tmp_path_factory.mktemp("ckpt") / "roberta", layers=6)  # distill.init_layers: [0, 3, 5]
    overrides = yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text())
    overrides["teacher"]["checkpoint"] = str(ckpt)
    overrides["teacher"]["train"]["lr"] = 1e-3  # a random-initialised encoder: only checks that it learns at all
    dest = copy_repo(tmp_path_factory.mktemp("repo"), overrides)
    run(["dvc", "repro"], dest)
    return dest


def test_roberta_runs_through_the_whole_chain(roberta_repo: Path):
    repo = roberta_repo
    bench = json.loads((repo / "artifacts/metrics/benchmark.json").read_text())
    names = json.dumps(bench)
    assert all(v in names for v in VARIANTS)
    for v in VARIANTS:
        assert verify_engine(repo / "artifacts/engines" / v)["status"] == "ok", v
    assert (repo / "artifacts/engines/best/manifest.json").is_file()
    distill = json.loads((repo / "artifacts/metrics/distill.json").read_text())
    assert distill["vocab"]["trimmed"] is False and "byte-level BPE" in distill["vocab"]["skipped"]
    ortopt = json.loads((repo / "artifacts/engines/final_fp32_ortopt/manifest.json").read_text())
    assert ortopt["source_model_type"] == "roberta" and ortopt["ort_model_type"] == "bert"
    student = json.loads((repo / "artifacts/models/sparse/config.json").read_text())
    assert student["model_type"] == "roberta" and student["pruned_heads"]


def test_unsupported_family_fails_in_check_params_within_seconds(roberta_repo: Path, tmp_path: Path):
    bad = tmp_path / "gpt2"
    shutil.copytree(Path(yaml.safe_load((roberta_repo / "params.yaml").read_text())["teacher"]["checkpoint"]), bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
    params = yaml.safe_load((roberta_repo / "params.yaml").read_text())
    params["teacher"]["checkpoint"] = str(bad)
    (roberta_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        start = time.monotonic()
        proc = run(["dvc", "repro"], roberta_repo, check=False)
        seconds = time.monotonic() - start
    finally:
        run(["git", "checkout", "--", "params.yaml"], roberta_repo)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and seconds < 60, seconds
    assert "model_type 'gpt2' is not supported; supported families: bert, distilbert, roberta, xlm-roberta, electra" in out
    assert "Running stage 'check_params'" in proc.stdout and "Running stage 'prepare'" not in proc.stdout
