"""One small adapter per model family over the module layout compression needs.

Compression code never spells out ``model.bert.encoder.layer[i].attention.self.query``:
it asks the adapter for a layer's linear maps and the config keys that size them. The
registry is keyed by ``config.model_type``: BERT, RoBERTa, XLM-RoBERTa and ELECTRA share
one layout (``<encoder>.layer[i].attention.self.query``...; only the base model's attribute,
``bert``/``roberta``/``electra``, differs, and ``base_model`` hides it); DistilBERT names its
modules ``transformer.layer[i].attention.q_lin``/``ffn.lin1`` and its config keys
``n_layers``/``dim``/``n_heads``/``hidden_dim``. The families themselves (and why others are
refused) are in :mod:`slimformer.families`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import prune_linear_layer

from slimformer.errors import CheckpointError


@dataclass(frozen=True)
class LayerModules:
    """The linear maps of one transformer block that compression reads and prunes."""

    query: nn.Linear  # hidden -> heads * head_size
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear  # heads * head_size -> hidden
    ffn_in: nn.Linear  # hidden -> intermediate
    ffn_out: nn.Linear  # intermediate -> hidden
    num_heads: int  # heads present now
    head_size: int
    head_ids: tuple[int, ...]  # config numbering of the heads present (what prune_heads expects)

    def linears(self) -> dict[str, nn.Linear]:
        return {n: getattr(self, n) for n in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")}


@dataclass(frozen=True)
class Adapter:
    encoder: Callable[[PreTrainedModel], nn.Module]  # the module holding the blocks
    blocks: Callable[[PreTrainedModel], nn.ModuleList]  # the transformer blocks, bottom to top
    modules: Callable[[nn.Module], LayerModules]  # one block -> its linear maps
    embeddings: Callable[[PreTrainedModel], nn.Module]
    depth_key: str  # config field names (they differ between families)
    hidden_key: str
    heads_key: str
    ffn_key: str

    def layers(self, model: PreTrainedModel) -> list[LayerModules]:
        return [self.modules(b) for b in self.blocks(model)]


def _bert_block(block: nn.Module) -> LayerModules:
    att = block.attention
    n = att.self.num_attention_heads
    ids = tuple(h for h in range(n + len(att.pruned_heads)) if h not in att.pruned_heads)
    return LayerModules(
        att.self.query, att.self.key, att.self.value, att.output.dense,
        block.intermediate.dense, block.output.dense, n, att.self.attention_head_size, ids,
    )  # fmt: skip


def _distilbert_block(block: nn.Module) -> LayerModules:
    att = block.attention
    n = att.n_heads
    ids = tuple(h for h in range(n + len(att.pruned_heads)) if h not in att.pruned_heads)
    return LayerModules(
        att.q_lin, att.k_lin, att.v_lin, att.out_lin, block.ffn.lin1, block.ffn.lin2, n, att.attention_head_size, ids,
    )  # fmt: skip


BERT = Adapter(
    encoder=lambda m: m.base_model.encoder,
    blocks=lambda m: m.base_model.encoder.layer,
    modules=_bert_block,
    embeddings=lambda m: m.base_model.embeddings,
    depth_key="num_hidden_layers",
    hidden_key="hidden_size",
    heads_key="num_attention_heads",
    ffn_key="intermediate_size",
)

DISTILBERT = Adapter(
    encoder=lambda m: m.base_model.transformer,
    blocks=lambda m: m.base_model.transformer.layer,
    modules=_distilbert_block,
    embeddings=lambda m: m.base_model.embeddings,
    depth_key="n_layers",
    hidden_key="dim",
    heads_key="n_heads",
    ffn_key="hidden_dim",
)

# one entry per supported family (slimformer.families.SUPPORTED); test_families checks they agree
ADAPTERS: dict[str, Adapter] = {
    "bert": BERT,
    "distilbert": DISTILBERT,
    "roberta": BERT,
    "xlm-roberta": BERT,
    "electra": BERT,
}


def adapter_for(model: PreTrainedModel | PretrainedConfig) -> Adapter:
    """The adapter for a model's (or a config's) ``model_type``; an unsupported family is a clear error."""
    kind = getattr(getattr(model, "config", model), "model_type", None)
    if kind not in ADAPTERS:
        raise CheckpointError(
            f"model_type {kind!r} has no compression adapter; supported: {', '.join(ADAPTERS)} "
            "(add one in slimformer/adapters.py)"
        )
    return ADAPTERS[kind]


def shrink_linear(lin: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep output rows (``dim=0``) or input columns (``dim=1``) ``keep`` of ``lin``, in place."""
    new = prune_linear_layer(lin, keep, dim=dim)
    lin.weight, lin.bias = new.weight, new.bias
    lin.in_features, lin.out_features = new.in_features, new.out_features


def ffn_magnitudes(layer: LayerModules) -> torch.Tensor:
    """``||W_in[n, :]|| * ||W_out[:, n]||`` per FFN neuron ``(intermediate,)``."""
    return layer.ffn_in.weight.detach().norm(dim=1) * layer.ffn_out.weight.detach().norm(dim=0)
