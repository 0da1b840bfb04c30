"""Vocabulary trimming: keep only the token ids a training corpus uses, with the same tokenization.

A small student's parameters sit mostly in the embedding matrix, so only the token ids the
training corpus uses (plus special tokens) are kept and the tokenizer is rebuilt with the new
ids, checked to tokenize the corpus to exactly the remapped ids.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertTokenizerFast, PreTrainedModel

from slimformer.errors import CheckpointError, ConfigError
from slimformer.modeling import count_parameters
from slimformer.training import Encoded, encode, evaluate


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
    return {
        "trimmed": True,
        "vocab_size_before": len(full_tok),
        "vocab_size": len(keep),
        "params_before": count_parameters(full),
        "test_unk_rate_before": unk_rate(full_tok, full_enc),
        "test_unk_rate_after": unk_rate(trimmed_tok, trimmed_enc),
        "test_accuracy_untrimmed": evaluate(full, full_enc, batch_size, full_tok.pad_token_id)["accuracy"],
    }
