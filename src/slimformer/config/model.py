"""Params sections of the model side: data, teacher, distillation, structured and gradual pruning."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from slimformer.config.base import Section, _is_codec, check


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """``data``: where the corpus comes from and how it is split."""

    source: str = "rotten_tomatoes"  # the packaged corpus, or a path to a .csv/.jsonl file
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of a user file (a UTF-8 byte-order mark is dropped); latin-1, cp1252, utf-16, ...
    labels: tuple[str, ...] = ("rotten", "fresh")  # index = class id
    split: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, val, test
    min_rows_per_class: int = 10
    max_rows: int = 0  # 0 = all; >0 keeps a stratified sample (for quick trials and tests)
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.split) == 3, "split", "three fractions [train, val, test]", list(self.split))
        check(all(0 < f < 1 for f in self.split), "split", "fractions strictly between 0 and 1", list(self.split))
        check(abs(sum(self.split) - 1) < 1e-6, "split", "fractions that sum to 1", list(self.split))
        check(len(self.labels) >= 2, "labels", "at least two label names", list(self.labels))
        check(len(set(self.labels)) == len(self.labels), "labels", "distinct label names", list(self.labels))
        check(self.min_rows_per_class >= 3, "min_rows_per_class", "an integer >= 3", self.min_rows_per_class)
        check(self.max_rows >= 0, "max_rows", "0 (all rows) or a positive integer", self.max_rows)
        check(_is_codec(self.encoding), "encoding", "a Python codec name (utf-8, latin-1, cp1252, utf-16, ...)", self.encoding)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation settings shared by every training stage."""

    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 64
    group_by_length: bool = True  # batches of similar length: far less padding
    num_threads: int = 2
    nproc: int = 1  # >1 launches DistributedDataParallel workers through torchrun
    seed: int = 0
    min_epochs: ClassVar[int] = 1

    def __post_init__(self) -> None:
        low = self.min_epochs
        check(self.epochs >= low, "epochs", f"an integer >= {low}" + (" (0: no training)" if low == 0 else ""), self.epochs)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(0 < self.lr < 1, "lr", "a number in (0, 1)", self.lr)
        check(0 <= self.weight_decay < 1, "weight_decay", "a number in [0, 1)", self.weight_decay)
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        check(self.max_grad_norm > 0, "max_grad_norm", "a number > 0", self.max_grad_norm)
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)
        check(1 <= self.nproc <= 64, "nproc", "an integer in [1, 64]", self.nproc)


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig(TrainConfig):
    """``teacher.train``: as :class:`TrainConfig`, and ``epochs: 0`` keeps the checkpoint's own head untrained."""

    min_epochs: ClassVar[int] = 0


@dataclasses.dataclass(frozen=True)
class TeacherConfig(Section):
    """``teacher``: which pretrained checkpoint to fine-tune, and how.

    ``train.epochs: 0`` uses an already fine-tuned checkpoint as it is: its own
    classification head, matched to ``data.labels`` by name.
    """

    checkpoint: str = "all-MiniLM-L6-v2"  # the packaged MiniLM, or a local directory of a supported family
    train: TeacherTrainConfig = TeacherTrainConfig()


def _check_kd(alpha: float, temperature: float) -> None:
    check(0 <= alpha <= 1, "alpha", "a number in [0, 1] (weight of the soft-target term)", alpha)
    check(0 < temperature <= 100, "temperature", "a number in (0, 100]", temperature)


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Section):
    """``distill.augment``: perturbed copies of the training sentences, labelled by the teacher.

    Tang et al. 2019 ("Distilling task-specific knowledge from BERT into simple neural
    networks"): each word of a copy becomes ``[MASK]`` with ``mask_prob``; then, with
    ``ngram_prob``, the copy is cut to a random run of 1..``ngram_max`` words. The student
    learns the teacher's soft labels on them (no hard-label loss: they have no label).
    """

    copies: int = 0  # perturbed copies per training sentence; 0 = off
    mask_prob: float = 0.1
    ngram_prob: float = 0.25
    ngram_max: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check(0 <= self.copies <= 20, "copies", "an integer in [0, 20]", self.copies)
        check(0 <= self.mask_prob < 1, "mask_prob", "a number in [0, 1)", self.mask_prob)
        check(0 <= self.ngram_prob <= 1, "ngram_prob", "a number in [0, 1]", self.ngram_prob)
        check(self.ngram_max >= 1, "ngram_max", "an integer >= 1", self.ngram_max)
        check(
            self.copies == 0 or self.mask_prob > 0 or self.ngram_prob > 0, "copies",
            "0 unless mask_prob or ngram_prob is > 0 (unperturbed copies add nothing)", self.copies,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistillConfig(Section):
    """``distill``: a compound-scaled student trained on the cached teacher logits (Hinton KD)."""

    depth_multiplier: float = 0.5  # student layers = round(teacher layers x this), at least 1
    width_multiplier: float = 1.0  # heads and FFN width scale by this; below 1 the student starts random
    ffn_multiplier: float = 0.52  # FFN neurons kept per layer; copied layers keep the teacher's strongest
    init_layers: tuple[int, ...] = (0, 3, 5)  # teacher layer copied into each student layer; [] = evenly spaced
    alpha: float = 0.7  # weight of the soft-target KL term; (1 - alpha) weighs label cross-entropy
    temperature: float = 2.0
    hidden_weight: float = 0.0  # > 0 adds hidden-state MSE to the mapped teacher layers (teacher runs live)
    trim_vocab: bool = True  # keep only token ids seen in the training corpus (plus special tokens)
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig(epochs=2, lr=5e-4, warmup_ratio=0.06)

    def __post_init__(self) -> None:
        check(0 < self.depth_multiplier <= 1, "depth_multiplier", "a number in (0, 1]", self.depth_multiplier)
        check(0 < self.width_multiplier <= 1, "width_multiplier", "a number in (0, 1]", self.width_multiplier)
        check(0 < self.ffn_multiplier <= 1, "ffn_multiplier", "a number in (0, 1]", self.ffn_multiplier)
        layers = list(self.init_layers)
        check(all(i >= 0 for i in layers), "init_layers", "teacher layer indices >= 0", layers)
        check(len(set(layers)) == len(layers), "init_layers", "distinct layer indices", layers)
        _check_kd(self.alpha, self.temperature)
        check(self.hidden_weight >= 0, "hidden_weight", "a number >= 0", self.hidden_weight)
        check(
            self.hidden_weight == 0 or self.width_multiplier == 1, "hidden_weight",
            "0 unless width_multiplier is 1 (hidden states of different widths cannot be compared)",
            self.hidden_weight,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PruneStructuredConfig(Section):
    """``prune_structured``: remove the least important heads and FFN neurons, then recover with KD."""

    head_importance: Literal["gradient", "entropy"] = "gradient"  # Michel et al. 2019, or attention entropy
    neuron_importance: Literal["taylor", "magnitude"] = "taylor"  # |activation x gradient|, or weight norms
    heads_fraction: float = 0.30  # of all heads, removed (ranked across layers unless heads_scope: per_layer)
    heads_scope: Literal["global", "per_layer"] = "global"
    neurons_fraction: float = 0.30  # of each layer's FFN neurons (the same count per layer: HF stores one size)
    importance_batches: int = 0  # validation batches used to score heads and neurons; 0 = all
    alpha: float = 0.7
    temperature: float = 2.0
    latency_rounds: int = 30  # timed forward passes of the same test batch, before and after
    train: TrainConfig = TrainConfig(epochs=1, lr=5e-5, warmup_ratio=0.06)

    def __post_init__(self) -> None:
        check(0 <= self.heads_fraction < 1, "heads_fraction", "a number in [0, 1)", self.heads_fraction)
        check(0 <= self.neurons_fraction < 1, "neurons_fraction", "a number in [0, 1)", self.neurons_fraction)
        n = self.importance_batches
        check(n >= 0, "importance_batches", "0 (all) or a positive integer", n)
        _check_kd(self.alpha, self.temperature)
        check(self.latency_rounds >= 1, "latency_rounds", "an integer >= 1", self.latency_rounds)


@dataclasses.dataclass(frozen=True)
class PruneDynamicConfig(Section):
    """``prune_dynamic``: gradual magnitude pruning (Zhu & Gupta 2017) during a KD fine-tune."""

    initial_sparsity: float = 0.0
    final_sparsity: float = 0.5  # of the prunable weights (encoder linear layers, plus what is opted in)
    begin_step: int = 0
    end_step: int = 0  # last sparsity update; 0 = 3/4 of the first epoch (leaves steps to recover)
    frequency: int = 10  # optimizer steps between mask updates
    ranking: Literal["global", "per_layer"] = "global"  # one magnitude threshold, or one per weight matrix
    prune_embeddings: bool = False
    prune_classifier: bool = False  # pooler and classifier
    alpha: float = 0.7
    temperature: float = 2.0
    train: TrainConfig = TrainConfig(epochs=1, lr=5e-5, warmup_ratio=0.06)

    def __post_init__(self) -> None:
        check(0 <= self.initial_sparsity < 1, "initial_sparsity", "a number in [0, 1)", self.initial_sparsity)
        check(0 < self.final_sparsity < 1, "final_sparsity", "a number in (0, 1)", self.final_sparsity)
        check(
            self.initial_sparsity <= self.final_sparsity, "initial_sparsity",
            f"a number <= final_sparsity ({self.final_sparsity})", self.initial_sparsity,
        )  # fmt: skip
        check(self.begin_step >= 0, "begin_step", "an integer >= 0", self.begin_step)
        check(
            self.end_step == 0 or self.end_step > self.begin_step, "end_step",
            f"0 (automatic) or an integer > begin_step ({self.begin_step})", self.end_step,
        )  # fmt: skip
        check(self.frequency >= 1, "frequency", "an integer >= 1", self.frequency)
        _check_kd(self.alpha, self.temperature)
