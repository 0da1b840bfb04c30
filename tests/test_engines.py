"""The engine contract: manifests, sha256 verification, runners, the index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import sum_model, sum_reference

from slimformer.engines import (
    INPUTS,
    MANIFEST,
    RUNNERS,
    EngineSkipped,
    index_engines,
    load_engine,
    read_manifest,
    verify_engine,
    write_manifest,
)
from slimformer.errors import CheckpointError, SlimformerError
from slimformer.io import sha256_file


def make_engine(d: Path, **kw) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    sum_model(d / "model.onnx")
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nfilm\n", encoding="utf-8")
    args = {"format": "onnx", "precision": "fp32", "variant": d.name, "source_model": "models/x", "labels": ["neg", "pos"],
            "opset": 18, "parity": {"kind": "atol", "max_abs_diff": 0.0}}  # fmt: skip
    return write_manifest(d, **(args | kw))


def test_manifest_fields_and_hashes(tmp_path):
    m = make_engine(tmp_path / "e")
    on_disk = json.loads((tmp_path / "e" / MANIFEST).read_text())
    assert on_disk == m
    assert m["status"] == "ok" and m["format"] == "onnx" and m["precision"] == "fp32" and m["variant"] == "e"
    assert set(m["files"]) == {"model.onnx", "vocab.txt"}  # every file but the manifest itself
    assert m["files"]["model.onnx"] == sha256_file(tmp_path / "e" / "model.onnx")
    assert m["inputs"] == INPUTS and [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    assert m["inputs"][0]["shape"] == ["batch", "sequence"] and m["outputs"][0]["name"] == "logits"
    assert m["labels"] == ["neg", "pos"] and m["opset"] == 18
    assert verify_engine(tmp_path / "e") == m


def test_runner_contract_dynamic_shapes(tmp_path):
    make_engine(tmp_path / "e")
    runner = load_engine(tmp_path / "e", num_threads=1)
    assert runner.runtime == "onnxruntime-cpu"
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 1), (3, 7), (32, 64)]:
        ids = rng.integers(0, 100, (batch, seq), dtype=np.int64)
        mask = (rng.random((batch, seq)) > 0.3).astype(np.int64)
        out = runner(ids, mask)
        assert out.dtype == np.float32 and out.shape == (batch, 2)
        np.testing.assert_array_equal(out, sum_reference(ids, mask))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="thread affinity is Linux-only")
def test_pinned_worker_threads_give_the_same_logits(tmp_path):
    make_engine(tmp_path / "e")
    core = min(os.sched_getaffinity(0))
    runner = load_engine(tmp_path / "e", num_threads=2, worker_cores=(core,))  # ORT accepts the affinity string
    ids = np.arange(12, dtype=np.int64).reshape(2, 6)
    np.testing.assert_array_equal(runner(ids, np.ones_like(ids)), sum_reference(ids, np.ones_like(ids)))
    with pytest.raises(ValueError, match="1 cores needed"):
        load_engine(tmp_path / "e", num_threads=2, worker_cores=(core, core))


def test_tampered_file_is_named(tmp_path):
    make_engine(tmp_path / "e")
    with open(tmp_path / "e" / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: sha256 does not match"):
        load_engine(tmp_path / "e")


def test_missing_file_is_named(tmp_path):
    make_engine(tmp_path / "e")
    (tmp_path / "e" / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"model\.onnx: listed in manifest\.json but missing"):
        verify_engine(tmp_path / "e")


@pytest.mark.parametrize("damage", ["truncate", "not_onnx"])
def test_invalid_onnx_rejected_even_with_matching_hash(tmp_path, damage):
    """A file whose manifest was rewritten to match still has to be a valid ONNX model."""
    d = tmp_path / "e"
    make_engine(d)
    path = d / "model.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"this is not a model\n" * 10)
    make_engine_manifest_only(d)
    with pytest.raises(CheckpointError, match=r"model\.onnx: not a valid ONNX model"):
        load_engine(d)


def make_engine_manifest_only(d: Path) -> None:
    write_manifest(d, format="onnx", precision="fp32", variant=d.name, source_model="m", labels=["a", "b"])


def test_no_manifest_and_bad_manifest(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(CheckpointError, match="no engine manifest"):
        load_engine(tmp_path / "e")
    (tmp_path / "e" / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable engine manifest"):
        read_manifest(tmp_path / "e")
    (tmp_path / "e" / MANIFEST).write_text(json.dumps({"format": "coreml", "precision": "fp32", "variant": "e",
                                                        "files": {}, "status": "ok"}))  # fmt: skip
    with pytest.raises(CheckpointError, match="unknown engine format 'coreml'"):
        read_manifest(tmp_path / "e")


def test_skipped_engine(tmp_path):
    d = tmp_path / "tensorrt_fp16"
    d.mkdir()
    m = write_manifest(d, format="tensorrt", precision="fp16", variant=d.name, source_model="x", labels=["a", "b"],
                       status="skipped", reason="no CUDA device")  # fmt: skip
    assert m["status"] == "skipped" and m["reason"] == "no CUDA device" and m["files"] == {}
    with pytest.raises(EngineSkipped, match="no CUDA device") as e:
        load_engine(d)
    assert isinstance(e.value, SlimformerError)
    with pytest.raises(ValueError):
        write_manifest(d, format="tensorrt", precision="fp16", variant="v", source_model="x", labels=[], status="skipped")


def test_runner_registry_and_index(tmp_path):
    assert set(RUNNERS) == {"onnx", "torchscript", "tensorrt"}
    make_engine(tmp_path / "a")
    (tmp_path / "b").mkdir()
    write_manifest(tmp_path / "b", format="tensorrt", precision="int8", variant="b", source_model="x", labels=[],
                   status="skipped", reason="no tensorrt")  # fmt: skip
    (tmp_path / "not_an_engine").mkdir()
    index = index_engines(tmp_path)
    assert set(index) == {"a", "b"}
    assert index["a"]["engine_bytes"] == (tmp_path / "a" / "model.onnx").stat().st_size
    assert index["b"] == {"format": "tensorrt", "precision": "int8", "status": "skipped", "source_model": "x",
                          "path": "b", "reason": "no tensorrt"}  # fmt: skip


def _edit_manifest(d: Path, edit) -> Path:
    path = d / MANIFEST
    path.write_text(json.dumps(edit(json.loads(path.read_text()))), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: [m], "engine manifest must be a JSON object, got a JSON list"),
        (lambda m: "onnx", "engine manifest must be a JSON object, got a JSON str"),
        (lambda m: m | {"files": list(m["files"])}, "manifest 'files' must map file names to sha256 strings"),
        (lambda m: m | {"files": {"model.onnx": 7}}, "manifest 'files' must map file names to sha256 strings"),
        (lambda m: m | {"format": ["onnx"]}, "manifest 'format' must be a string, got ['onnx']"),
        (lambda m: m | {"format": "tensorrt", "device": "gpu0"}, "manifest 'device' must be a CUDA device index (an integer >= 0), got 'gpu0'"),
        (lambda m: m | {"format": "tensorrt", "device": -1}, "manifest 'device' must be a CUDA device index"),
    ],
    ids=["list", "string", "files-list", "files-non-str-hash", "format-list", "trt-device-str", "trt-device-negative"],
)
def test_malformed_manifest_is_a_checkpoint_error_naming_it(tmp_path, edit, message):
    make_engine(tmp_path / "e")
    path = _edit_manifest(tmp_path / "e", edit)
    for fn in (read_manifest, verify_engine, load_engine):
        with pytest.raises(CheckpointError) as e:
            fn(tmp_path / "e")
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_garbage_torchscript_file_is_a_checkpoint_error_naming_it(tmp_path):
    """A file that is not a TorchScript archive, listed with its own (matching) sha256."""
    d = tmp_path / "ts"
    d.mkdir()
    (d / "model.ts").write_bytes(b"PK\x03\x04 this is not a TorchScript archive" * 10)
    write_manifest(d, format="torchscript", precision="fp32", variant="ts", source_model="models/x", labels=["neg", "pos"])
    with pytest.raises(CheckpointError, match=rf"^{d / 'model.ts'}: not a loadable TorchScript file"):
        load_engine(d, num_threads=1)
