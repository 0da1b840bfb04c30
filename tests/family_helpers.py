"""Tiny random-initialised checkpoints of every supported family, each with a tokenizer of its
own kind (WordPiece, byte-level BPE, SentencePiece Unigram) trained with the ``tokenizers``
library on a few hundred sentences of the packaged corpus, saved with ``save_pretrained``.
Nothing is downloaded.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra")
LABELS = {0: "rotten", 1: "fresh"}


@cache
def corpus_sentences(n: int = 400) -> tuple[str, ...]:
    """The first ``n`` texts of the packaged Rotten Tomatoes corpus (what the tiny profile trains on)."""
    from slimformer.config import DataConfig
    from slimformer.data import read_corpus

    examples, _, _ = read_corpus(DataConfig())
    return tuple(ex.text for ex in examples[:n])


def _wordpiece(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def _byte_level_bpe(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return tok


def _unigram(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="<unk>"))
    s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", s), ("</s>", e)]
    )
    return tok


def build_tokenizer(model_type: str, texts):
    """A transformers fast tokenizer of ``model_type``'s class over a freshly trained backend."""
    from transformers import (
        BertTokenizerFast, DistilBertTokenizerFast, ElectraTokenizerFast, RobertaTokenizerFast, XLMRobertaTokenizerFast,
    )  # fmt: skip

    texts = list(texts)
    wp = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    rb = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
          "cls_token": "<s>", "sep_token": "</s>"}  # fmt: skip
    if model_type in ("bert", "distilbert", "electra"):
        cls = {"bert": BertTokenizerFast, "distilbert": DistilBertTokenizerFast, "electra": ElectraTokenizerFast}
        return cls[model_type](tokenizer_object=_wordpiece(texts, 800), **wp)
    if model_type == "roberta":
        return RobertaTokenizerFast(tokenizer_object=_byte_level_bpe(texts, 600), **rb)
    if model_type == "xlm-roberta":
        return XLMRobertaTokenizerFast(tokenizer_object=_unigram(texts, 600), **rb)
    raise ValueError(model_type)


def build_config(model_type: str, tok, layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64):
    from transformers import AutoConfig

    common = {"vocab_size": len(tok), "max_position_embeddings": 130, "pad_token_id": tok.pad_token_id,
              "num_labels": 2, "id2label": dict(LABELS), "label2id": {v: k for k, v in LABELS.items()}}  # fmt: skip
    if model_type == "distilbert":
        return AutoConfig.for_model(
            "distilbert", n_layers=layers, dim=hidden, n_heads=heads, hidden_dim=ffn, **common
        )
    extra = {"embedding_size": hidden} if model_type == "electra" else {}
    if model_type in ("roberta", "xlm-roberta"):
        extra = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "type_vocab_size": 1}
    return AutoConfig.for_model(
        model_type, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        intermediate_size=ffn, **extra, **common,
    )  # fmt: skip


def make_checkpoint(model_type: str, out: Path, seed: int = 0, **sizes) -> Path:
    """A random-initialised ``model_type`` sequence classifier with its own tokenizer, saved in ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    tok = build_tokenizer(model_type, corpus_sentences())
    model = AutoModelForSequenceClassification.from_config(build_config(model_type, tok, **sizes)).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
