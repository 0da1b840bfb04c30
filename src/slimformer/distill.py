"""Knowledge distillation: a compound-scaled student learns the teacher's soft targets.

* Loss (Hinton et al. 2015): ``(1-a) * CE(y) + a * T^2 * KL(p_t^T || p_s^T)``, optionally plus
  hidden-state MSE between mapped layers. The ``T^2`` keeps the soft-target gradients on the
  same scale as the hard-label ones whatever the temperature.
* Teacher logits are computed once per split and cached in a safetensors file (its own DVC
  out); every KD stage looks them up by ``Batch.indices``.
* The student is the teacher's config scaled by depth and width multipliers; where widths
  match it starts from named teacher layers, embeddings and head (DistilBERT-style).
* Augmentation (optional, ``distill.augment``): perturbed copies of the training sentences
  (words masked, copies cut to n-grams; Tang et al. 2019) are labelled once by the teacher
  with the other logits; the student matches the teacher on them with the KL term only.
* Vocabulary trimming: a small student's parameters sit mostly in the embedding matrix, so
  only the token ids the training corpus uses (plus special tokens) are kept and the tokenizer
  is rebuilt with the new ids, checked to tokenize the corpus to exactly the remapped ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification, BertTokenizerFast, PreTrainedModel

from slimformer.adapters import adapter_for, ffn_magnitudes, shrink_linear
from slimformer.config import AugmentConfig, DistillConfig, TrainConfig
from slimformer.data import load_labels, load_split
from slimformer.errors import CheckpointError, ConfigError, DataError
from slimformer.io import atomic_file, sha256_file
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, save_model
from slimformer.seed import set_seed
from slimformer.training import (
    Batch, Encoded, FitResult, classification_metrics, encode, fit, predict_logits, run_fingerprint, world,
)  # fmt: skip

SPLITS = ("train", "val", "test")

# ------------------------------------------------------------------------------ losses


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """Hinton KD loss. Logits ``(batch, classes)``, labels ``(batch,)``; returns a scalar.

    ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``,
    the KL averaged over the batch. Rows labelled ``-1`` (teacher-labelled augmentations)
    have no hard label: the cross-entropy averages over the labelled rows only.
    """
    t = temperature
    labelled = labels >= 0
    if bool(labelled.all()):
        ce = F.cross_entropy(student_logits, labels)
    else:
        ce = F.cross_entropy(student_logits, labels, ignore_index=-1, reduction="sum") / labelled.sum().clamp(min=1)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean", log_target=True,
    )  # fmt: skip
    return (1 - alpha) * ce + alpha * t * t * kl


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between paired hidden states ``(batch, seq, hidden)`` over real tokens.

    ``mask`` is the attention mask ``(batch, seq)``; padding positions do not count.
    """
    m = mask.unsqueeze(-1).to(student[0].dtype)
    per_pair = [(((s - t) ** 2) * m).sum() / (m.sum() * s.shape[-1]) for s, t in zip(student, teacher, strict=True)]
    return torch.stack(per_pair).mean()


@dataclass
class KDLoss:
    """``loss_fn(model, batch)`` for :func:`slimformer.training.fit` using cached teacher logits.

    With ``hidden_weight > 0`` the teacher also runs live (hidden states are too large to
    cache): student layer ``i`` is pulled towards teacher layer ``layer_map[i]``.
    """

    teacher_logits: torch.Tensor  # (n_train, classes), row i = training example i
    alpha: float
    temperature: float
    hidden_weight: float = 0.0
    teacher: nn.Module | None = None
    layer_map: tuple[int, ...] = ()
    teacher_ids: torch.Tensor | None = None  # (student vocab,) student token id -> teacher token id

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        want_hidden = self.hidden_weight > 0
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=want_hidden)
        loss = kd_loss(out.logits, self.teacher_logits[batch.indices], batch.labels, self.alpha, self.temperature)
        if want_hidden:
            ids = batch.input_ids if self.teacher_ids is None else self.teacher_ids[batch.input_ids]
            with torch.no_grad():
                t_out = self.teacher(input_ids=ids, attention_mask=batch.attention_mask, output_hidden_states=True)
            s_h = out.hidden_states[1:]
            t_h = [t_out.hidden_states[j + 1] for j in self.layer_map]
            loss = loss + self.hidden_weight * hidden_mse(s_h, t_h, batch.attention_mask)
        return loss


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


# ------------------------------------------------------------------------------ student construction


def student_config(teacher_config, depth_multiplier: float, width_multiplier: float):
    """The teacher's config scaled down: layers by depth, heads (fixed head size) and FFN by width."""
    a = adapter_for(teacher_config)
    depth_key, hidden_key, heads_key, ffn_key = a.depth_key, a.hidden_key, a.heads_key, a.ffn_key
    cfg = copy.deepcopy(teacher_config)
    depth = getattr(cfg, depth_key)
    setattr(cfg, depth_key, max(1, round(depth * depth_multiplier)))
    if width_multiplier != 1:
        heads, hidden = getattr(cfg, heads_key), getattr(cfg, hidden_key)
        new_heads = max(1, round(heads * width_multiplier))
        setattr(cfg, heads_key, new_heads)
        setattr(cfg, hidden_key, new_heads * (hidden // heads))
        setattr(cfg, ffn_key, max(1, round(getattr(cfg, ffn_key) * width_multiplier)))
    cfg.pruned_heads = {}
    return cfg


def resolve_init_layers(init_layers: Sequence[int], teacher_depth: int, student_depth: int) -> tuple[int, ...]:
    """Teacher layer per student layer: the configured list, or evenly spaced from bottom to top."""
    if not init_layers:
        if student_depth == 1:
            return (teacher_depth - 1,)
        return tuple(round(i * (teacher_depth - 1) / (student_depth - 1)) for i in range(student_depth))
    layers = tuple(init_layers)
    bad = [i for i in layers if i >= teacher_depth]
    if bad:
        raise ConfigError(
            f"distill.init_layers: got {list(layers)}, but the teacher has no layer {bad[0]}; "
            f"allowed: indices 0..{teacher_depth - 1}"
        )
    if len(layers) != student_depth:
        raise ConfigError(
            f"distill.init_layers: got {len(layers)} layers {list(layers)}, but the student has {student_depth} "
            "(distill.depth_multiplier); name one teacher layer per student layer, or [] for evenly spaced"
        )
    return layers


def copy_teacher_layers(student: PreTrainedModel, teacher: PreTrainedModel, layer_map: Sequence[int]) -> None:
    """Copy teacher block ``layer_map[i]`` into student block ``i``, and every non-block weight by name."""
    adapter = adapter_for(teacher)
    s_blocks, t_blocks = adapter.blocks(student), adapter.blocks(teacher)
    for i, j in enumerate(layer_map):
        s_blocks[i].load_state_dict(t_blocks[j].state_dict())
    prefix = next(n for n, m in student.named_modules() if m is s_blocks) + "."
    t_state = teacher.state_dict()
    rest = {k: t_state[k] for k in student.state_dict() if not k.startswith(prefix)}
    student.load_state_dict(rest, strict=False)


def keep_strongest_neurons(model: PreTrainedModel, fraction: float) -> int:
    """Keep ``round(fraction * width)`` FFN neurons in every layer, the largest by
    ``||W_in[n, :]|| * ||W_out[:, n]||``; record the new width in the config. Returns it."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    k = max(1, round(fraction * layers[0].ffn_in.out_features))
    for layer in layers:
        keep = ffn_magnitudes(layer).topk(k).indices.sort().values
        shrink_linear(layer.ffn_in, keep, dim=0)
        shrink_linear(layer.ffn_out, keep, dim=1)
    setattr(model.config, adapter.ffn_key, k)
    return k


def build_student(teacher: PreTrainedModel, cfg: DistillConfig) -> tuple[PreTrainedModel, tuple[int, ...] | None]:
    """A student per ``cfg`` and the teacher layers it was initialised from (None: random init).

    Where widths match, the student's blocks are copies of the named teacher blocks; with
    ``ffn_multiplier < 1`` each copy then keeps only its strongest FFN neurons.
    """
    adapter = adapter_for(teacher)
    config = student_config(teacher.config, cfg.depth_multiplier, cfg.width_multiplier)
    t_depth = getattr(teacher.config, adapter.depth_key)
    layer_map = resolve_init_layers(cfg.init_layers, t_depth, getattr(config, adapter.depth_key))
    set_seed(cfg.train.seed)
    widths_match = getattr(config, adapter.hidden_key) == getattr(teacher.config, adapter.hidden_key)
    if not widths_match:
        ffn = max(1, round(getattr(config, adapter.ffn_key) * cfg.ffn_multiplier))
        setattr(config, adapter.ffn_key, ffn)
        return AutoModelForSequenceClassification.from_config(config), None
    t_pruned = teacher.config.pruned_heads or {}  # a head-pruned teacher layer stays head-pruned in its copy
    config.pruned_heads = {i: list(t_pruned.get(j, [])) for i, j in enumerate(layer_map) if t_pruned.get(j)}
    student = AutoModelForSequenceClassification.from_config(config)
    copy_teacher_layers(student, teacher, layer_map)
    if cfg.ffn_multiplier < 1:
        keep_strongest_neurons(student, cfg.ffn_multiplier)
    return student, layer_map


# ------------------------------------------------------------------------------ vocabulary trimming


def corpus_token_ids(tokenizer, texts: Sequence[str]) -> list[int]:
    """Sorted ids of every token the corpus uses (untruncated), plus the special tokens."""
    used: set[int] = set(tokenizer.all_special_ids)
    for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]:
        used.update(ids)
    return sorted(used)


def trim_unsupported(tokenizer) -> str | None:
    """Why ``tokenizer``'s vocabulary cannot be trimmed with the same tokenization guaranteed; None if it can.

    Only WordPiece with BERT's normaliser is rebuilt: greedy longest-match over a vocabulary
    that keeps every piece the corpus used splits each corpus word the same way (checked
    after rebuilding, sentence by sentence). Byte-level BPE applies merges whose intermediate
    tokens need not appear in any output, and Unigram picks the most probable split over the
    whole vocabulary, so dropping unused tokens can change how corpus words split: those
    tokenizers keep their full vocabulary, and the student's metrics say why.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    norm, model = state.get("normalizer") or {}, state.get("model") or {}
    kind = model.get("type")
    if kind == "WordPiece" and norm.get("type") == "BertNormalizer" and norm.get("clean_text", True):
        return None
    if kind == "BPE":
        return ("byte-level BPE: its merges build tokens through intermediate tokens the corpus never outputs, "
                "so a trimmed vocabulary could split corpus words differently; full vocabulary kept")  # fmt: skip
    if kind == "Unigram":
        return ("SentencePiece Unigram: the best split is chosen over the whole vocabulary, so removing unused "
                "pieces could change the split of corpus words; full vocabulary kept")  # fmt: skip
    return (f"tokenizer model {kind!r} with normalizer {norm.get('type')!r}: only BERT WordPiece vocabularies are "
            "rebuilt with an identical tokenization; full vocabulary kept")  # fmt: skip


def trimmed_tokenizer(tokenizer, keep: Sequence[int]) -> BertTokenizerFast:
    """A WordPiece tokenizer whose vocab is ``keep`` (old ids, in order): new id = position in ``keep``.

    The normalisation settings (lower-casing, accents, CJK splitting) are copied from the
    original, so the same raw text goes into every later engine.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    norm, model = state.get("normalizer") or {}, state.get("model") or {}
    if model.get("type") != "WordPiece" or norm.get("type") != "BertNormalizer" or not norm.get("clean_text", True):
        raise ConfigError(
            "distill.trim_vocab: supported for BERT WordPiece tokenizers only "
            f"(found model {model.get('type')!r}, normalizer {norm.get('type')!r}); set it to false"
        )
    vocab = tokenizer.convert_ids_to_tokens(list(keep))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(f"{tok}\n" for tok in vocab), encoding="utf-8")
        new = BertTokenizerFast(
            vocab_file=str(path),
            do_lower_case=norm.get("lowercase", True),
            strip_accents=norm.get("strip_accents"),
            tokenize_chinese_chars=norm.get("handle_chinese_chars", True),
            wordpieces_prefix=model.get("continuing_subword_prefix", "##"),
            unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
            cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
            model_max_length=tokenizer.model_max_length,
        )  # fmt: skip
    new.backend_tokenizer.model.max_input_chars_per_word = model.get("max_input_chars_per_word", 100)
    return new


def remap_table(keep: Sequence[int], old_vocab_size: int, unk_new: int) -> torch.Tensor:
    """``(old_vocab,)`` old id -> new id; dropped ids map to ``unk_new``."""
    table = torch.full((old_vocab_size,), unk_new, dtype=torch.long)
    table[torch.tensor(list(keep))] = torch.arange(len(keep))
    return table


def verify_trimmed(old_tok, new_tok, keep: Sequence[int], texts: Sequence[str]) -> None:
    """Fail loudly unless ``new_tok(text) == remap(old_tok(text))`` for every text.

    A dropped id maps to -1 here (not to [UNK]), so a corpus token missing from ``keep`` fails too.
    """
    table = remap_table(keep, len(old_tok), -1).tolist()
    old = old_tok(list(texts), truncation=False)["input_ids"]
    new = new_tok(list(texts), truncation=False)["input_ids"]
    for i, (o, n) in enumerate(zip(old, new, strict=True)):
        if [table[t] for t in o] != n:
            raise CheckpointError(
                f"vocabulary trimming: the rebuilt tokenizer splits training text {i} differently "
                f"({texts[i][:80]!r}); set distill.trim_vocab: false for this tokenizer"
            )


def trim_embeddings(model: PreTrainedModel, keep: Sequence[int]) -> None:
    """Keep only rows ``keep`` of the word-embedding matrix ``(vocab, hidden)``, in that order."""
    old = model.get_input_embeddings()
    idx = torch.tensor(list(keep))
    pad_old = model.config.pad_token_id
    pad_new = int((idx == pad_old).nonzero()[0, 0]) if pad_old is not None and pad_old in keep else None
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=pad_new)
    with torch.no_grad():
        new.weight.copy_(old.weight[idx])
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = pad_new


def untrimmed_copy(model: PreTrainedModel, keep: Sequence[int], full_embeddings: torch.Tensor) -> PreTrainedModel:
    """``model`` with its full vocabulary back: trained rows for kept ids, ``full_embeddings`` elsewhere.

    Rows the corpus never uses get no gradient in training, so their initial values (the
    teacher's, for a student of the teacher's width) are what an untrimmed student would hold
    there; this measures what trimming costs on words the training corpus never had.
    """
    full = copy.deepcopy(model)
    emb = nn.Embedding(*full_embeddings.shape, padding_idx=None)
    with torch.no_grad():
        emb.weight.copy_(full_embeddings)
        emb.weight[torch.tensor(list(keep))] = model.get_input_embeddings().weight
    full.set_input_embeddings(emb)
    full.config.vocab_size = full_embeddings.shape[0]
    return full


def unk_rate(tokenizer, data: Encoded) -> float:
    """Fraction of non-special tokens that are [UNK]."""
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    toks = [t for seq in data.input_ids for t in seq if t not in special]
    return sum(t == tokenizer.unk_token_id for t in toks) / max(len(toks), 1)


# ------------------------------------------------------------------------------ measurement


def macs_per_sequence(model: PreTrainedModel, seq_len: int) -> int:
    """Multiply-accumulates for one sequence of ``seq_len`` tokens, from the actual module shapes.

    Per layer: the six linear maps on every token plus the two attention products
    (``heads * seq^2 * head_size`` each). Linear maps outside the blocks (pooler, classifier)
    run on the [CLS] token only. Embedding lookups, softmax, GELU and LayerNorm are left out.
    """
    adapter = adapter_for(model)
    total, inside = 0, set()
    for layer in adapter.layers(model):
        for lin in layer.linears().values():
            total += seq_len * lin.in_features * lin.out_features
            inside.add(id(lin))
        total += 2 * layer.num_heads * seq_len * seq_len * layer.head_size
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m) not in inside:
            total += m.in_features * m.out_features
    return total


def agreement(logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of examples where student and teacher predict the same class."""
    return float((logits.argmax(-1) == teacher_logits.argmax(-1)).mean())


def model_metrics(
    model: PreTrainedModel, splits: dict[str, Encoded], teacher_logits: dict[str, torch.Tensor],
    pad_id: int, batch_size: int, seq_len: int,
) -> dict[str, Any]:  # fmt: skip
    """Val/test accuracy and macro-F1, agreement with the teacher, parameters and FLOPs per sequence."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        logits = predict_logits(model, splits[split], batch_size, pad_id)
        m = classification_metrics(logits, np.asarray(splits[split].labels))
        t = teacher_logits[split].numpy()
        out |= {f"{split}_accuracy": m["accuracy"], f"{split}_macro_f1": m["macro_f1"]}
        out[f"{split}_teacher_agreement"] = agreement(logits, t)
        out[f"teacher_{split}_accuracy"] = classification_metrics(t, np.asarray(splits[split].labels))["accuracy"]
    macs = macs_per_sequence(model, seq_len)
    out["params"] = count_parameters(model)
    out["flops_per_sequence"] = {"seq_len": seq_len, "macs": macs, "flops": 2 * macs}
    return out


# ------------------------------------------------------------------------------ training


def kd_fit(
    model: PreTrainedModel, splits: dict[str, Encoded], loss: KDLoss, cfg: TrainConfig, pad_id: int,
    ckpt_dir: str | Path, fingerprint: str, desc: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:  # fmt: skip
    """:func:`slimformer.training.fit` with a KD loss; model selection on validation accuracy."""
    return fit(
        model, splits["train"], splits["val"], cfg, pad_id, ckpt_dir, fingerprint,
        loss_fn=loss, on_epoch=on_epoch, desc=desc, on_step=on_step,
    )  # fmt: skip


def encode_splits(tokenizer, data_dir: Path, max_length: int) -> dict[str, Encoded]:
    return {s: encode(tokenizer, load_split(data_dir / f"{s}.jsonl"), max_length) for s in SPLITS}


def trim_vocab(student: PreTrainedModel, tokenizer, texts: Sequence[str]) -> tuple[Any, list[int], torch.Tensor]:
    """Trim ``student`` and ``tokenizer`` to the tokens of ``texts``; verify the remapping.

    Returns the new tokenizer, the kept old ids and the full ``(vocab, hidden)`` embedding
    matrix from before trimming (to measure what trimming costs).
    """
    keep = corpus_token_ids(tokenizer, texts)
    new_tok = trimmed_tokenizer(tokenizer, keep)
    verify_trimmed(tokenizer, new_tok, keep, texts)
    full_rows = student.get_input_embeddings().weight.detach().clone()
    trim_embeddings(student, keep)
    return new_tok, keep, full_rows


def vocab_effect(
    student: PreTrainedModel, keep: list[int], full_rows: torch.Tensor, full_tok, trimmed_tok,
    test: list, max_length: int, batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """Test-set [UNK] rate and accuracy with and without trimming, and the embedding's size."""
    full_enc = encode(full_tok, test, max_length)
    trimmed_enc = encode(trimmed_tok, test, max_length)
    full = untrimmed_copy(student, keep, full_rows)
    full_logits = predict_logits(full, full_enc, batch_size, full_tok.pad_token_id)
    return {
        "trimmed": True,
        "vocab_size_before": len(full_tok),
        "vocab_size": len(keep),
        "params_before": count_parameters(full),
        "test_unk_rate_before": unk_rate(full_tok, full_enc),
        "test_unk_rate_after": unk_rate(trimmed_tok, trimmed_enc),
        "test_accuracy_untrimmed": classification_metrics(full_logits, np.asarray(full_enc.labels))["accuracy"],
    }


def distill(
    cfg: DistillConfig,
    teacher_dir: str | Path,
    data_dir: str | Path,
    logits_path: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Build, (optionally) vocabulary-trim and distil a student; write it to ``out_dir``.

    Returns the metrics for ``distill.json`` (empty on non-zero ranks under DDP).
    """
    t_start = time.perf_counter()
    teacher_dir, data_dir, t = Path(teacher_dir), Path(data_dir), cfg.train
    labels = load_labels(data_dir)
    teacher = load_classifier(teacher_dir, labels)
    full_tok = tokenizer = load_tokenizer(teacher_dir)
    logits = load_teacher_logits(logits_path, data_dir, t.max_length, "distill.train.max_length")
    student, layer_map = build_student(teacher, cfg)
    keep, teacher_ids = None, None
    train_texts = [ex.text for ex in load_split(data_dir / "train.jsonl")]
    skipped = trim_unsupported(full_tok) if cfg.trim_vocab else None
    if cfg.trim_vocab and skipped is None:
        tokenizer, keep, full_rows = trim_vocab(student, full_tok, train_texts)
        teacher_ids = torch.tensor(keep)  # the live teacher (hidden-state loss) takes the old ids
    splits = encode_splits(tokenizer, data_dir, t.max_length)
    pad = tokenizer.pad_token_id
    aug_texts, aug_logits = augmented_rows(logits, logits_path, train_texts, cfg.augment, full_tok.mask_token)
    train, train_logits = splits["train"], logits["train"]
    if aug_texts:  # labels -1: soft targets only
        aug_ids = tokenizer(aug_texts, truncation=True, max_length=t.max_length)["input_ids"]
        train = Encoded(train.input_ids + aug_ids, train.labels + [-1] * len(aug_ids))
        train_logits = torch.cat([train_logits, aug_logits])
    loss = KDLoss(
        train_logits, cfg.alpha, cfg.temperature, cfg.hidden_weight,
        teacher if cfg.hidden_weight > 0 else None, layer_map or (), teacher_ids,
    )  # fmt: skip
    fingerprint = run_fingerprint(
        t, cfg.to_dict(), sha256_file(teacher_dir / "model.safetensors"), sha256_file(logits_path), world()[1]
    )
    result = kd_fit(student, splits | {"train": train}, loss, t, pad, ckpt_dir, fingerprint, "distill", on_epoch)
    if world()[0] != 0:
        return {}
    metrics = model_metrics(student, splits, logits, pad, t.eval_batch_size, t.max_length)
    teacher_params = count_parameters(teacher)
    metrics["teacher_params"] = teacher_params
    metrics["non_embedding_params_ratio"] = metrics["params"]["non_embedding"] / teacher_params["non_embedding"]
    metrics["teacher_flops_per_sequence"] = 2 * macs_per_sequence(teacher, t.max_length)
    metrics["init_layers"] = list(layer_map) if layer_map else "random"
    metrics["augment"] = {"copies": cfg.augment.copies, "rows": len(aug_texts), "train_rows": len(train)}
    metrics["vocab"] = {"trimmed": False, "vocab_size": len(tokenizer)}
    if skipped is not None:
        metrics["vocab"]["skipped"] = skipped
    if keep is not None:
        test = load_split(data_dir / "test.jsonl")
        metrics["vocab"] = vocab_effect(
            student, keep, full_rows, full_tok, tokenizer, test, t.max_length, t.eval_batch_size
        )
    metrics |= {"best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1)}
    metrics["resumed_from_epoch"] = result.resumed_from_epoch
    extra = {"stage": "distill", "labels": labels, "init_layers": metrics["init_layers"]}
    save_model(student, tokenizer, out_dir, extra=extra)
    metrics["seconds"] = round(time.perf_counter() - t_start, 1)
    return metrics
