"""The teacher-logit cache every KD stage reads, and the augmented sentences it labels.

* Teacher logits are computed once per split and cached in a safetensors file (its own DVC
  out, written by the ``teacher_logits`` stage); every KD stage (distill, prune_structured,
  prune_dynamic, quantize_qat) looks them up by ``Batch.indices``.
* Augmentation (optional, ``distill.augment``): perturbed copies of the training sentences
  (words masked, copies cut to n-grams; Tang et al. 2019) are labelled once by the teacher
  with the other logits; the student matches the teacher on them with the KL term only.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from slimformer.config import AugmentConfig
from slimformer.data import SPLITS, load_split
from slimformer.errors import ConfigError, DataError
from slimformer.io import atomic_file, sha256_file
from slimformer.modeling import load_classifier, load_tokenizer
from slimformer.training import Encoded, classification_metrics, encode, predict_logits

# ------------------------------------------------------------------------------ augmentation


def augment_texts(texts: Sequence[str], cfg: AugmentConfig, mask_token: str) -> list[str]:
    """``cfg.copies`` perturbed copies of every text, deterministic in ``cfg.seed``.

    Each word becomes ``mask_token`` with ``cfg.mask_prob``; then, with ``cfg.ngram_prob``,
    the copy is cut to a random run of 1..``cfg.ngram_max`` words. A copy equal to its
    source, or with every word masked, carries nothing new and is left out.
    """
    rng = random.Random(cfg.seed)
    out = []
    for _ in range(cfg.copies):
        for text in texts:
            words = text.split()
            new = [mask_token if rng.random() < cfg.mask_prob else w for w in words]
            if len(new) > 1 and rng.random() < cfg.ngram_prob:
                n = rng.randint(1, min(cfg.ngram_max, len(new)))
                start = rng.randrange(len(new) - n + 1)
                new = new[start : start + n]
            if new != words and any(w != mask_token for w in new):
                out.append(" ".join(new))
    return out


def _texts_sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------ teacher logits cache


def cache_teacher_logits(
    teacher_dir: str | Path, data_dir: str | Path, max_length: int, batch_size: int, out_path: str | Path,
    augment: AugmentConfig | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the teacher once over every split; write ``{split: (n, classes)}`` logits to ``out_path``.

    With ``augment.copies > 0`` the teacher also labels the augmented training sentences
    (tensor ``augmented``). The file's metadata records the inputs (data hashes, max_length,
    teacher weights hash, augmentation settings and texts hash) so a later stage refuses
    logits that belong to other data, another truncation length or other augmentations.
    """
    t0 = time.perf_counter()
    teacher_dir, data_dir = Path(teacher_dir), Path(data_dir)
    model = load_classifier(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    tensors, report = {}, {}
    for split in SPLITS:
        enc = encode(tokenizer, load_split(data_dir / f"{split}.jsonl"), max_length)
        logits = predict_logits(model, enc, batch_size, tokenizer.pad_token_id, desc=f"teacher logits {split}")
        tensors[split] = torch.from_numpy(logits)
        report[f"teacher_{split}_accuracy"] = classification_metrics(logits, np.asarray(enc.labels))["accuracy"]
    augment = augment or AugmentConfig()
    aug = augment_texts([ex.text for ex in load_split(data_dir / "train.jsonl")], augment, tokenizer.mask_token)
    if aug:
        enc = Encoded(tokenizer(aug, truncation=True, max_length=max_length)["input_ids"], [-1] * len(aug))
        logits = predict_logits(model, enc, batch_size, tokenizer.pad_token_id, desc="teacher logits augmented")
        tensors["augmented"] = torch.from_numpy(logits)
        probs = torch.softmax(tensors["augmented"], -1)
        report["augmented_mean_confidence"] = float(probs.max(-1).values.mean())
    meta = {f"{s}_sha256": sha256_file(data_dir / f"{s}.jsonl") for s in SPLITS}
    meta |= {"max_length": str(max_length), "teacher_sha256": sha256_file(teacher_dir / "model.safetensors")}
    meta |= {"augment": json.dumps(augment.to_dict(), sort_keys=True), "augmented_sha256": _texts_sha256(aug)}
    with atomic_file(out_path, "wb") as f:
        f.write(safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
    report["rows"] = {s: int(t.shape[0]) for s, t in tensors.items()}
    return report | {"seconds": round(time.perf_counter() - t0, 1)}


def load_teacher_logits(
    path: str | Path, data_dir: str | Path, max_length: int, key: str
) -> dict[str, torch.Tensor]:
    """Cached teacher logits ``{split: (n, classes)}``, checked against the data and ``max_length``.

    ``key`` names the params key holding ``max_length`` (for the error message). The
    teacher's logits on augmented sentences, if cached, come as ``augmented``; see
    :func:`augmented_rows` for the texts.
    """
    path, data_dir = Path(path), Path(data_dir)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            logits = {s: f.get_tensor(s) for s in SPLITS}
            if "augmented" in f.keys():
                logits["augmented"] = f.get_tensor("augmented")
    except FileNotFoundError:
        raise DataError(f"{path}: teacher logits not found; run the teacher_logits stage first") from None
    except Exception as e:  # noqa: BLE001 - a corrupt cache is a data problem to the user
        raise DataError(f"{path}: cannot read cached teacher logits ({type(e).__name__}: {e})") from None
    if meta.get("max_length") != str(max_length):
        raise ConfigError(
            f"{key}: got {max_length}, but the cached teacher logits in {path} were computed at max_length "
            f"{meta.get('max_length')} (distill.train.max_length); use the same length or recompute them"
        )
    for s in SPLITS:
        if meta.get(f"{s}_sha256") != sha256_file(data_dir / f"{s}.jsonl"):
            raise DataError(f"{path}: the cached logits belong to another {s}.jsonl; rerun the teacher_logits stage")
    return logits


def augmented_rows(
    logits: dict[str, torch.Tensor], path: str | Path, train_texts: Sequence[str], cfg: AugmentConfig,
    mask_token: str,
) -> tuple[list[str], torch.Tensor]:  # fmt: skip
    """The augmented texts for ``cfg`` and their cached teacher logits, checked to belong together.

    The texts are regenerated (deterministic in ``cfg.seed``) and must hash to what the
    teacher_logits stage labelled (``path``'s metadata); other settings mean the cache is stale.
    """
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    cached = json.loads(meta.get("augment", "null") or "null") or AugmentConfig().to_dict()
    if cached != cfg.to_dict():
        raise ConfigError(
            f"distill.augment: got {cfg.to_dict()}, but the teacher logits in {path} were computed for {cached}; "
            "rerun the teacher_logits stage (dvc repro does)"
        )
    texts = augment_texts(train_texts, cfg, mask_token)
    if _texts_sha256(texts) != meta.get("augmented_sha256", _texts_sha256([])):
        raise DataError(f"{path}: the cached augmented logits belong to other sentences; rerun teacher_logits")
    rows = logits.get("augmented")
    if rows is None:
        rows = torch.zeros((0, logits["train"].shape[1]))
    return texts, rows
