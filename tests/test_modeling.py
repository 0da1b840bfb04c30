"""Safe loading: every bad checkpoint is refused with a message naming the file and the problem."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from slimformer.errors import CheckpointError
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, resolve_checkpoint, save_model


@pytest.fixture
def ckpt(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "ckpt"))


def test_save_and_reload_round_trip(tmp_path: Path, ckpt: Path):
    model, tok = load_classifier(ckpt), load_tokenizer(ckpt)
    out = save_model(model, tok, tmp_path / "again", extra={"note": "x"})
    again = load_classifier(out)
    x = torch.tensor([[101, 2000, 2001, 102]])
    torch.testing.assert_close(model(input_ids=x).logits, again(input_ids=x).logits)
    assert json.loads((out / "slimformer.json").read_text()) == {"note": "x"}
    assert not list(tmp_path.glob(".again*"))


def test_parameter_breakdown(ckpt: Path):
    p = count_parameters(load_classifier(ckpt))
    assert p["total"] == p["embedding"] + p["non_embedding"]
    assert p["embedding"] == (30522 + 128 + 2) * 32 + 2 * 32  # word, position, type embeddings + LayerNorm


def test_truncated_safetensors(ckpt: Path):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*(truncated|corrupt)"):
        load_classifier(ckpt)


def test_garbage_safetensors(ckpt: Path):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_classifier(ckpt)


def test_missing_tokenizer(ckpt: Path):
    for name in ("tokenizer.json", "vocab.txt"):
        (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        load_classifier(ckpt)


def test_config_that_does_not_match_the_weights(ckpt: Path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hidden_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json does not match model.safetensors"):
        load_classifier(ckpt)


def test_pickle_only_checkpoint_is_refused_without_unpickling(ckpt: Path):
    (ckpt / "model.safetensors").unlink()
    # A pickle whose loading would run code: it must never be opened.
    (ckpt / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/slimformer-pwned'\ntR.")
    with pytest.raises(CheckpointError, match="only pickle weights .pytorch_model.bin.*safetensors only"):
        load_classifier(ckpt)
    assert not Path("/tmp/slimformer-pwned").exists()


def test_missing_directory_and_unknown_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_classifier(tmp_path)
