"""Export a model directory to deployable engines (the parity gate they pass is :mod:`slimformer.engines.gate`).

Exporters sit in :data:`EXPORTERS`, keyed by name, all with one signature::

    fn(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict

They write the engine file into ``out_dir`` (an empty temporary directory) and return the
format-specific manifest fields (``format``, ``precision``, ``opset``, how it was made).
Where TensorRT cannot build, :func:`build_engine` writes a skipped engine (a manifest with
the reason, no engine file) through :func:`slimformer.engines.tensorrt.write_skipped` instead.
``probes`` are real test-split batches: exporters trace on them, and the ORT optimizer
checks its fusions on them.

:func:`build_engine` runs one exporter inside :func:`slimformer.io.atomic_dir`, copies the
tokenizer, passes the engine through :func:`slimformer.engines.gate.gate` (fp32/fp16: every logit within ``atol``
of the reference at every probe; int8: argmax agreement with the float source on val) and
seals the directory with its manifest. A failing gate raises ParityError and leaves no
directory behind.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimformer.config import ExportConfig
from slimformer.engines import ENGINE_FILES, OrtRunner, ParityError, TorchRunner, runtime_versions
from slimformer.engines import tensorrt as trt_engine
from slimformer.engines.gate import Probe, compare_on_probes, gate_inputs, seal_engine
from slimformer.errors import ConfigError
from slimformer.families import family
from slimformer.io import atomic_dir
from slimformer.modeling import load_classifier, load_tokenizer
from slimformer.onnx_export import LogitsOnly, export_onnx, finish_onnx, onnx_torchscript, quiet_torch_deprecations, trace_example

# --------------------------------------------------------------------------- exporters


def export_torchscript(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """fp32 TorchScript by ``torch.jit.trace`` on a real padded test batch."""
    model = LogitsOnly(load_classifier(source_dir)).eval()
    return _trace(model, out_dir, probes) | {"precision": "fp32"}


def export_torchscript_int8(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """int8 TorchScript: torch dynamic quantization of every nn.Linear, then trace.

    Weights are qint8 per output channel: on the MiniLM teacher per-tensor weights cost 1.8
    val points, per-channel 0.2 (measured). Embeddings stay fp32 (torch's dynamic
    quantization covers Linear only). These quantized modules do not export to ONNX; the
    int8 ONNX engines come from ONNX Runtime instead.
    """
    model = LogitsOnly(load_classifier(source_dir)).eval()
    with quiet_torch_deprecations():
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        qmodel = torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8)
    return _trace(qmodel, out_dir, probes) | {"precision": "int8",
                                              "quantization": "torch dynamic, nn.Linear qint8 weights per channel"}  # fmt: skip


def _trace(model: nn.Module, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    with quiet_torch_deprecations(), torch.inference_mode():
        traced = torch.jit.trace(model, trace_example(probes), check_trace=False)
        torch.jit.save(traced, str(out_dir / ENGINE_FILES["torchscript"]))
    return {"format": "torchscript", "opset": None, "exporter": "torch.jit.trace",
            "runtime": runtime_versions("torch")}  # fmt: skip


def fusion_summary(fused: dict[str, int], recipe: str) -> str:
    """What ORT's optimizer did to the graph, in words for the manifest (measured, not assumed)."""
    if "only_onnxruntime" in recipe or "basic" in recipe:
        return "none: no fusion recipe kept parity with PyTorch; plain graph with ONNX Runtime's basic optimizations"
    if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        return "partial: the optimizer fused no attention block for this graph; " + (", ".join(fused) or "nothing")
    return "fused: " + ", ".join(f"{k} x{v}" for k, v in fused.items())


def export_onnx_ortopt(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """fp32 ONNX with ONNX Runtime's BERT fusions (Attention, EmbedLayerNormalization, SkipLayerNorm, BiasGelu).

    The graph comes from the TorchScript-based exporter: ORT's fusion patterns match it, and
    on the dynamo graph they fuse no Attention (measured). Heads may be pruned unevenly per
    layer, so a global ``num_heads`` can be wrong; each recipe is checked against PyTorch on
    the probes and the first that passes ``atol`` on the CPU EP is kept: config heads, then
    heads auto-detected per layer, then ORT's basic graph optimizations only.
    """
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415

    hf = load_classifier(source_dir)
    model_type = family(hf.config.model_type).ort_model_type  # the optimizer's name for this family's graph
    reference = TorchRunner(hf)
    path = out_dir / ENGINE_FILES["onnx"]
    recipes = [
        ("bert fusions, num_heads/hidden_size from config",
         {"num_heads": hf.config.num_attention_heads, "hidden_size": hf.config.hidden_size, "opt_level": 1}),
        ("bert fusions, heads detected per layer", {"num_heads": 0, "hidden_size": 0, "opt_level": 1}),
        ("onnxruntime basic optimizations only", {"opt_level": 1, "only_onnxruntime": True}),
    ]  # fmt: skip
    attempts = []
    with tempfile.TemporaryDirectory(prefix="ortopt.") as tmp:
        raw = Path(tmp) / "raw.onnx"
        onnx_torchscript(LogitsOnly(hf).eval(), trace_example(probes), raw, cfg.opset)
        for name, kwargs in recipes:
            try:
                opt = optimize_model(str(raw), model_type=model_type, **kwargs)
                opt.save_model_to_file(str(path), use_external_data_format=False)
                finish_onnx(path)
                fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
                parity = compare_on_probes(OrtRunner(path, cfg.num_threads), reference, probes)
            except Exception as e:  # noqa: BLE001 - a failed recipe is recorded, the next one tried
                attempts.append({"recipe": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            attempts.append({"recipe": name, "fused": fused, "max_abs_diff": parity["max_abs_diff"]})
            if parity["max_abs_diff"] <= cfg.atol:
                return {"format": "onnx", "precision": "fp32", "opset": cfg.opset, "exporter": "torch.onnx torchscript",
                        "optimizer": "onnxruntime.transformers.optimizer", "recipe": name, "attempts": attempts,
                        "source_model_type": hf.config.model_type, "ort_model_type": model_type,
                        "fusion": fusion_summary(fused, name),
                        "runtime": runtime_versions("torch", "onnx", "onnxruntime")}  # fmt: skip
    raise ParityError(f"onnx_ortopt: no optimization recipe kept parity within atol {cfg.atol}: {attempts}")


def export_tensorrt_fp16(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """FP16 TensorRT engine from an fp32 ONNX engine directory."""
    return _tensorrt(source_dir, cfg, out_dir, "fp16")


def export_tensorrt_int8(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """INT8 TensorRT engine from a QDQ ONNX engine directory (explicit quantization, no calibrator)."""
    return _tensorrt(source_dir, cfg, out_dir, "int8")


def _tensorrt(source_dir: Path, cfg: ExportConfig, out_dir: Path, precision: str) -> dict[str, Any]:
    info = trt_engine.source_info(source_dir, precision, cfg.tensorrt)
    built = trt_engine.build_engine(source_dir / ENGINE_FILES["onnx"], out_dir / ENGINE_FILES["tensorrt"], precision, cfg.tensorrt)
    return info | {"build": built, "runtime": {"tensorrt": built["tensorrt_version"]}}


Exporter = Callable[[Path, ExportConfig, Path, list[Probe]], dict[str, Any]]

EXPORTERS: dict[str, Exporter] = {
    "torchscript": export_torchscript,
    "torchscript_int8": export_torchscript_int8,
    "onnx": export_onnx,
    "onnx_ortopt": export_onnx_ortopt,
    "tensorrt_fp16": export_tensorrt_fp16,
    "tensorrt_int8": export_tensorrt_int8,
}


# --------------------------------------------------------------------------- building an engine


def build_engine(
    exporter: str, source_dir: str | Path, cfg: ExportConfig, data_dir: str | Path, out_dir: str | Path, variant: str | None = None
) -> dict[str, Any]:
    """Export ``source_dir`` with ``EXPORTERS[exporter]`` into the engine directory ``out_dir``.

    ``source_dir`` is a model directory (torchscript*, onnx*) or an ONNX engine directory
    (tensorrt_*). All or nothing: on any error ``out_dir`` keeps its previous content.
    Returns the manifest (plus ``build_seconds``).
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter {exporter!r} unknown; known: {', '.join(EXPORTERS)}")
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    variant = variant or out_dir.name
    if exporter in trt_engine.PRECISION_OF_EXPORTER:  # checks source and profile; None where TensorRT can build
        skipped = trt_engine.write_skipped(exporter, source_dir, cfg.tensorrt, out_dir, variant)
        if skipped is not None:
            return skipped
    tokenizer = load_tokenizer(source_dir)
    inputs = gate_inputs(tokenizer, data_dir, cfg)
    with atomic_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        info = EXPORTERS[exporter](source_dir, cfg, tmp, inputs.probes)
        info["build_seconds"] = round(time.perf_counter() - t0, 2)
        info["exporter_name"] = exporter
        manifest = seal_engine(tmp, info, source_dir, variant, cfg, inputs)
    return manifest

