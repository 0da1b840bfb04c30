"""An exported engine directory is a standard Hugging Face folder: stock clients load it as it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import write_data

from slimformer.config import ExportConfig
from slimformer.engines import load_engine, verify_engine
from slimformer.export import build_engine

CFG = ExportConfig(batch_sizes=(1, 4), lengths=(8, 24), agreement_rows=0, max_length=24)
TEXTS = ["a moving, funny film", "tedious and far too long, with nothing to say at all", "great fun"]


@pytest.fixture(scope="module")
def onnx_engine(tmp_path_factory, tiny_bert_dir) -> Path:
    data = write_data(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("engines") / "tiny_fp32_onnx"
    build_engine("onnx", tiny_bert_dir, CFG, data, out)
    return out


def test_engine_folder_carries_config_labels_inputs_and_max_length(onnx_engine):
    m = verify_engine(onnx_engine)  # config.json and the tokenizer files are listed and hashed like the rest
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.onnx"} <= set(m["files"])
    assert m["labels"] == ["rotten", "fresh"] and m["max_length"] == 24
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    config = json.loads((onnx_engine / "config.json").read_text())
    assert config["id2label"] == {"0": "rotten", "1": "fresh"} and config["label2id"] == {"rotten": 0, "fresh": 1}
    tok_config = json.loads((onnx_engine / "tokenizer_config.json").read_text())
    assert tok_config["model_input_names"] == ["input_ids", "attention_mask"] and tok_config["model_max_length"] == 24


STOCK = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline

engine, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(engine)
session = ort.InferenceSession(f"{engine}/model.onnx", providers=["CPUExecutionProvider"])
logits = session.run(None, dict(tok(texts, padding=True, return_tensors="np")))[0]
model = ORTModelForSequenceClassification.from_pretrained(engine)
clf = pipeline("text-classification", model=model, tokenizer=tok)
print(json.dumps({"logits": logits.tolist(), "pipeline": clf(texts), "slimformer_imported": "slimformer" in sys.modules}))
"""


def test_onnxruntime_optimum_and_pipeline_load_the_folder_as_it_is(onnx_engine, tmp_path):
    proc = subprocess.run([sys.executable, "-c", STOCK, str(onnx_engine), json.dumps(TEXTS)], capture_output=True, text=True,
                          cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["slimformer_imported"] is False
    # the same logits as slimformer's own runner, sentence by sentence (unpadded)
    runner = load_engine(onnx_engine, num_threads=1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(onnx_engine)
    ours = np.concatenate([runner(e["input_ids"], e["attention_mask"]) for e in (tok([t], return_tensors="np") for t in TEXTS)])
    np.testing.assert_allclose(np.array(out["logits"]), ours, atol=1e-5)
    probs = np.exp(ours - ours.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, p in zip(out["pipeline"], probs, strict=True):
        assert row["label"] == ["rotten", "fresh"][int(p.argmax())]
        assert row["score"] == pytest.approx(float(p.max()), abs=1e-5)
