"""Torch to ONNX: the logits wrapper every engine traces, and the two ONNX exporters.

Shared by the export stage (its ``onnx`` and ``onnx_ortopt`` exporters), QAT (its fp32 graph
before Q/DQ) and the one-step baseline's fallback. The parity gate is not here: it lives in
:mod:`slimformer.engines.gate`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimformer.config import ExportConfig
from slimformer.contract import INPUT_NAMES, OUTPUT_NAME
from slimformer.engines import ENGINE_FILES, check_onnx, runtime_versions
from slimformer.engines.gate import Probe
from slimformer.modeling import load_classifier

MAX_BATCH = 4096  # upper bound of the dynamic batch axis (ONNX dynamo exporter needs one)

class LogitsOnly(nn.Module):
    """``(input_ids, attention_mask) -> logits``: the two inputs every engine takes, one tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) int64 x2 -> (batch, classes) float32."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@contextlib.contextmanager
def quiet_torch_deprecations() -> Iterator[None]:
    """Silence torch 2.13's deprecation notices for the formats we still ship on purpose.

    torch.jit (TorchScript engines), torch.ao.quantization (dynamic int8 TorchScript) and the
    TorchScript-based ONNX exporter (used where ORT's fusions need its graph) all still work
    in 2.13; the parity gate, not the absence of warnings, is what proves each engine right.
    TracerWarning: transformers builds its mask constants in Python; parity at several
    shapes proves the trace did not specialise.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def trace_example(probes: list[Probe]) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe to trace on: the largest one with padding, so the mask path is in the graph."""
    padded = [p for p in probes if p.batch_size > 1 and (p.attention_mask == 0).any()] or probes
    p = max(padded, key=lambda q: q.batch_size * q.length)
    return torch.from_numpy(p.input_ids), torch.from_numpy(p.attention_mask)


def export_onnx(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """fp32 ONNX with dynamic batch and sequence axes: dynamo exporter, TorchScript exporter as fallback."""
    model = LogitsOnly(load_classifier(source_dir)).eval()
    path = out_dir / ENGINE_FILES["onnx"]
    max_positions = int(model.model.config.max_position_embeddings)
    try:
        onnx_dynamo(model, trace_example(probes), path, cfg.opset, max_positions)
        exporter: dict[str, Any] = {"exporter": "torch.onnx dynamo"}
    except Exception as e:  # noqa: BLE001 - any dynamo failure: fall back, and say why
        for p in out_dir.glob("model.onnx*"):
            p.unlink()
        onnx_torchscript(model, trace_example(probes), path, cfg.opset)
        exporter = {"exporter": "torch.onnx torchscript (fallback)", "dynamo_error": f"{type(e).__name__}: {str(e)[:300]}"}
    finish_onnx(path)
    return {"format": "onnx", "precision": "fp32", "opset": cfg.opset, **exporter,
            "runtime": runtime_versions("torch", "onnx", "onnxruntime")}  # fmt: skip


def onnx_dynamo(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int, max_positions: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("sequence", min=1, max=max_positions)
    dims = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed": we export no torchvision op
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)  # torch internals
        torch.onnx.export(
            model, example, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=True, external_data=False, dynamic_shapes=dims, verbose=False,
        )  # fmt: skip
    registration.setLevel(level)


def onnx_torchscript(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    axes = {**{name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}}
    with quiet_torch_deprecations(), torch.inference_mode():
        torch.onnx.export(
            model, example, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=False, dynamic_axes=axes,
        )  # fmt: skip


def finish_onnx(path: Path) -> None:
    """One self-contained file: fold any external weights back in, then check it."""
    import onnx  # noqa: PLC0415

    external = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)
    if external:  # the dynamo exporter writes model.onnx.data unless told otherwise
        model = onnx.load(str(path), load_external_data=True)
        onnx.save(model, str(path), save_as_external_data=False)
        for name in external:
            (path.parent / name).unlink()
    check_onnx(path)
