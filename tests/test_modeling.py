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


def _rename_tensors(ckpt: Path, rename) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    renamed = {rename(k): v for k, v in tensors.items() if rename(k) is not None}
    save_file(renamed, ckpt / "model.safetensors", metadata={"format": "pt"})
    return renamed


def test_tensors_of_another_layout_are_refused_naming_them(ckpt: Path):
    """Names that do not match the architecture: transformers would load random weights in silence."""
    renamed = _rename_tensors(ckpt, lambda k: k.replace("bert.encoder.layer.", "bert.encoder.layers."))
    with pytest.raises(CheckpointError) as e:
        load_classifier(ckpt)
    msg = str(e.value)
    assert msg.startswith(f"{ckpt / 'model.safetensors'}: its tensors do not match the bert architecture")
    n = sum(1 for k in renamed if k.startswith("bert.encoder.layers."))
    assert n == 32 and f"missing {n} tensor(s): bert.encoder.layer.0." in msg
    assert f"unexpected {n} tensor(s): bert.encoder.layers.0." in msg
    assert f"and {n - 6} more" in msg  # long lists are cut, with a count
    with pytest.raises(CheckpointError, match="missing"):  # labels do not excuse an encoder that does not load
        load_classifier(ckpt, ["rotten", "fresh"])


def test_a_missing_layer_is_refused(ckpt: Path):
    _rename_tensors(ckpt, lambda k: None if k.startswith("bert.encoder.layer.1.output.") else k)
    with pytest.raises(CheckpointError, match=r"missing 4 tensor\(s\): bert\.encoder\.layer\.1\.output\.LayerNorm\.bias"):
        load_classifier(ckpt)


def test_base_checkpoint_gets_a_fresh_head_only_when_labels_are_given(ckpt: Path):
    """A base checkpoint (no classifier, an MLM head) is what a user fine-tunes: labels make that explicit."""
    mlm = torch.zeros(30522)
    renamed = _rename_tensors(ckpt, lambda k: None if k.startswith("classifier.") else k)
    from safetensors.torch import save_file

    save_file({**renamed, "cls.predictions.bias": mlm}, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing 2 tensor\(s\): classifier\.bias, classifier\.weight; unexpected 1"):
        load_classifier(ckpt)
    model = load_classifier(ckpt, ["negative", "neutral", "positive"])
    assert model.classifier.out_features == 3 and model.config.id2label[2] == "positive"
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, renamed["bert.embeddings.word_embeddings.weight"])


def test_packaged_minilm_loads_as_a_classifier_with_labels():
    model = load_classifier(resolve_checkpoint("all-MiniLM-L6-v2"), ["rotten", "fresh"])
    assert model.config.num_labels == 2
