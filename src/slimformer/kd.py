"""Knowledge distillation machinery every KD stage shares: the loss and the fit.

Loss (Hinton et al. 2015): ``(1-a) * CE(y) + a * T^2 * KL(p_t^T || p_s^T)``, optionally plus
hidden-state MSE between mapped layers. The ``T^2`` keeps the soft-target gradients on the
same scale as the hard-label ones whatever the temperature. The teacher logits the loss
compares with come from :mod:`slimformer.logit_cache` (its own module, so a change to the
loss does not rerun the ``teacher_logits`` stage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from slimformer.config import TrainConfig
from slimformer.io import sha256_file
from slimformer.training import Batch, Encoded, FitResult, fit, run_fingerprint, world

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


def kd_fingerprint(train: TrainConfig, settings: dict[str, Any], model_dir: str | Path, logits_path: str | Path) -> str:
    """Identifies a KD run for resuming: its section's ``settings``, the starting weights in ``model_dir``,
    the cached teacher logits and the world size."""
    weights = sha256_file(Path(model_dir) / "model.safetensors")
    return run_fingerprint(train, settings, weights, sha256_file(logits_path), world()[1])
