"""The engine contract: manifests, sha256 verification, runners, the index."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import sum_model, sum_reference

from slimformer.engines import (
    INPUTS,
    MANIFEST,
    RUNNERS,
    EngineSkipped,
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


def test_runner_registry(tmp_path):
    assert set(RUNNERS) == {"onnx", "torchscript", "tensorrt"}


# ------------------------------------------------------------------ a hostile or damaged download


def rewrite_manifest(d: Path, **changes) -> None:
    m = json.loads((d / MANIFEST).read_text())
    m |= changes
    (d / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("key", ["../outside.txt", "sub/../../outside.txt", "./vocab.txt", "a//b"])
def test_manifest_key_leaving_the_directory_is_refused(tmp_path, key):
    (tmp_path / "outside.txt").write_text("not part of the engine")
    d = tmp_path / "e"
    m = make_engine(d)
    rewrite_manifest(d, files=m["files"] | {key: sha256_file(tmp_path / "outside.txt")})
    with pytest.raises(CheckpointError, match=rf"manifest\.json: file name {re.escape(repr(key))} is not a plain relative path"):
        load_engine(d)


def test_absolute_manifest_key_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    d = tmp_path / "e"
    m = make_engine(d)
    rewrite_manifest(d, files=m["files"] | {str(outside): sha256_file(outside)})
    with pytest.raises(CheckpointError, match="is not a plain relative path"):
        verify_engine(d)


def test_unlisted_file_is_refused(tmp_path):
    d = make_engine_dir(tmp_path)
    (d / "extra.py").write_text("print('hello')\n")
    with pytest.raises(CheckpointError, match=r"extra\.py: not listed in manifest\.json"):
        load_engine(d)
    (d / "extra.py").unlink()
    (d / "sub").mkdir()
    (d / "sub" / "deep.bin").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match=r"sub/deep\.bin: not listed"):
        verify_engine(d)


def test_substituted_engine_file_with_empty_file_list_is_refused(tmp_path):
    """The attack of the issue: another model.onnx, and a manifest whose files are {}."""
    d = tmp_path / "e"
    make_engine(d)
    (d / "vocab.txt").unlink()
    rewrite_manifest(d, files={})
    with pytest.raises(CheckpointError, match=r"model\.onnx: not listed in manifest\.json"):
        load_engine(d)
    # and with the engine file absent too, an "ok" engine without its engine file is refused
    (d / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"model\.onnx: the engine file is not listed"):
        verify_engine(d)


@pytest.mark.parametrize("kind", ["file", "dir", "listed"])
def test_symlinks_are_refused(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    d = tmp_path / "e"
    m = make_engine(d)
    if kind == "dir":
        (d / "linked").symlink_to(outside, target_is_directory=True)
    else:
        (d / "secret.txt").symlink_to(outside / "secret.txt")
        if kind == "listed":
            rewrite_manifest(d, files=m["files"] | {"secret.txt": sha256_file(outside / "secret.txt")})
    with pytest.raises(CheckpointError, match="a symbolic link inside an engine directory"):
        load_engine(d)
    with pytest.raises(CheckpointError, match="symbolic link"):
        write_manifest(d, format="onnx", precision="fp32", variant="e", source_model="m", labels=["a", "b"])


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ([1, 2], "a JSON object is expected, got list"),
        ("engine", "a JSON object is expected, got str"),
        ({"format": "onnx", "precision": "fp32", "variant": "e", "status": "ok", "files": ["model.onnx"]}, "'files' must be an object"),
        ({"format": "onnx", "precision": "fp32", "variant": "e", "status": "ok", "files": {"model.onnx": 7}}, "'files' must be an object"),
        ({"format": 3, "precision": "fp32", "variant": "e", "status": "ok", "files": {}}, "'format' must be a string"),
        ({"format": "onnx", "precision": "fp32", "variant": "e", "status": "fine", "files": {}}, "'status' must be 'ok' or 'skipped'"),
        ({"format": "tensorrt", "precision": "fp16", "variant": "e", "status": "skipped", "files": {}, "device": "0"},
         "'device' must be a CUDA device index (an integer >= 0), got \"0\""),
        ({"format": "tensorrt", "precision": "fp16", "variant": "e", "status": "skipped", "files": {}, "device": "gpu0"},
         "'device' must be a CUDA device index"),
        ({"format": "tensorrt", "precision": "fp16", "variant": "e", "status": "skipped", "files": {}, "device": -1},
         "'device' must be a CUDA device index"),
        ({"format": "onnx", "precision": "fp32", "variant": "e", "status": "ok", "files": {}, "labels": "ab"},
         "'labels' must be a list of strings"),
    ],
)  # fmt: skip
def test_malformed_manifest_is_a_checkpoint_error_naming_the_file(tmp_path, manifest, expected):
    d = tmp_path / "e"
    d.mkdir()
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"e/manifest\.json: malformed engine manifest: {re.escape(expected)}"):
        verify_engine(d)


def make_engine_dir(tmp_path: Path) -> Path:
    make_engine(tmp_path / "e")
    return tmp_path / "e"


def test_torchscript_payload_runs_nothing_without_trust(tmp_path):
    """A TorchScript archive whose __setstate__ writes a file: verified, sealed by write_manifest, still not loaded."""
    torch = pytest.importorskip("torch")

    class Payload(torch.nn.Module):
        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.target, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.target = state[0]
            self.training = state[1]
            # runs inside torch.jit.load: map a file outside the engine directory and write into it
            mapped = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
            mapped.fill_(33)
            self.target = self.target + str(int(mapped.sum()))  # a use of the write, or TorchScript drops it

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.zeros(input_ids.shape[0], 2)

    victim = tmp_path / "victim.bin"
    d = tmp_path / "evil"
    d.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Payload(str(victim))), str(d / "model.ts"))
    write_manifest(d, format="torchscript", precision="fp32", variant="evil", source_model="m", labels=["a", "b"])
    victim.write_bytes(b"\0" * 8)
    assert verify_engine(d)["format"] == "torchscript"  # intact as sealed: the hashes prove nothing about intent
    with pytest.raises(CheckpointError, match=r"model\.ts: a TorchScript engine can run code when loaded"):
        load_engine(d)
    assert victim.read_bytes() == b"\0" * 8  # nothing ran
    # the payload is real: with explicit trust, loading runs it
    load_engine(d, trust_torchscript=True)
    assert victim.read_bytes() == b"!" * 8


def test_garbage_torchscript_file_is_a_checkpoint_error_naming_it(tmp_path):
    """A file that is not a TorchScript archive, listed with its own (matching) sha256."""
    d = tmp_path / "ts"
    d.mkdir()
    (d / "model.ts").write_bytes(b"PK\x03\x04 this is not a TorchScript archive" * 10)
    write_manifest(d, format="torchscript", precision="fp32", variant="ts", source_model="models/x", labels=["neg", "pos"])
    with pytest.raises(CheckpointError, match=rf"^{d / 'model.ts'}: not a loadable TorchScript file"):
        load_engine(d, num_threads=1, trust_torchscript=True)
