"""Export a model directory to deployable engines, and the parity gate every engine must pass.

Exporters sit in :data:`EXPORTERS`, keyed by name, all with one signature::

    fn(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict

They write the engine file into ``out_dir`` (an empty temporary directory) and return the
format-specific manifest fields (``format``, ``precision``, ``opset``, how it was made).
Where TensorRT cannot build, :func:`build_engine` writes a skipped engine (a manifest with
the reason, no engine file) through :func:`slimformer.tensorrt.write_skipped` instead.
``probes`` are real test-split batches: exporters trace on them, and the ORT optimizer
checks its fusions on them.

:func:`build_engine` runs one exporter inside :func:`slimformer.io.atomic_dir`, copies the
tokenizer, passes the engine through :func:`gate` (fp32/fp16: every logit within ``atol``
of the reference at every probe; int8: argmax agreement with the float source on val) and
seals the directory with its manifest. A failing gate raises ParityError and leaves no
directory behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimformer import tensorrt as trt_engine
from slimformer.config import ExportConfig
from slimformer.data import load_split
from slimformer.engines import (
    ENGINE_FILES,
    INPUTS,
    MANIFEST,
    RUNNERS,
    OrtRunner,
    ParityError,
    Runner,
    TorchRunner,
    check_onnx,
    load_engine,
    read_manifest,
    runtime_versions,
    source_labels,
    write_manifest,
)
from slimformer.errors import CheckpointError, ConfigError
from slimformer.families import family
from slimformer.io import atomic_dir, write_json
from slimformer.modeling import load_classifier, load_tokenizer
from slimformer.training import batch_order, collate, encode

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json")
ONNX_INPUTS = ["input_ids", "attention_mask"]
MAX_BATCH = 4096  # upper bound of the dynamic batch axis (ONNX dynamo exporter needs one)

# --------------------------------------------------------------------------- parity inputs


@dataclass(frozen=True)
class Probe:
    """One parity batch: real test sentences, padded (or truncated) to exactly ``length`` tokens."""

    batch_size: int
    length: int
    input_ids: np.ndarray  # (batch_size, length) int64
    attention_mask: np.ndarray  # (batch_size, length) int64; row 0 is full, later rows carry padding


@dataclass(frozen=True)
class GateInputs:
    probes: list[Probe]  # every batch size x length, from the test split
    agreement: list[tuple[np.ndarray, np.ndarray]]  # (input_ids, attention_mask) batches covering val rows


def parity_probes(tokenizer, texts: list[str], batch_sizes: tuple[int, ...], lengths: tuple[int, ...], seed: int) -> list[Probe]:
    """Batches of real sentences at every (batch size, length).

    Row 0 joins sentences until it fills ``length`` tokens, so the batch is exactly that long
    with no padding in one row; the other rows are single sentences truncated to ``length``
    and padded, so masks with real padding are exercised too.
    """
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    probes = []
    for bs in batch_sizes:
        for length in lengths:
            picks = rng.sample(range(len(texts)), min(bs, len(texts)))
            picks += [rng.randrange(len(texts)) for _ in range(bs - len(picks))]
            long_text, k = texts[picks[0]], 0
            while len(tokenizer(long_text)["input_ids"]) < length and k < 200:
                long_text += " " + texts[rng.randrange(len(texts))]
                k += 1
            rows = [long_text] + [texts[i] for i in picks[1:]]
            enc = tokenizer(rows, truncation=True, max_length=length, padding=False)["input_ids"]
            ids = np.full((bs, length), pad, dtype=np.int64)
            mask = np.zeros((bs, length), dtype=np.int64)
            for r, seq in enumerate(enc):
                ids[r, : len(seq)] = seq
                mask[r, : len(seq)] = 1
            probes.append(Probe(bs, length, ids, mask))
    return probes


def agreement_batches(tokenizer, examples, max_length: int, batch_size: int = 64, rows: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``rows`` examples (0 = all) as length-grouped, padded numpy batches."""
    examples = examples[:rows] if rows else examples
    data = encode(tokenizer, examples, max_length)
    order = batch_order([len(x) for x in data.input_ids], batch_size, shuffle=False, seed=0, group_by_length=True)
    out = []
    for idx in order:
        b = collate(data, idx, tokenizer.pad_token_id)
        out.append((b.input_ids.numpy(), b.attention_mask.numpy()))
    return out


def gate_inputs(tokenizer, data_dir: str | Path, cfg: ExportConfig) -> GateInputs:
    """Parity probes from ``test.jsonl`` and agreement batches from ``val.jsonl`` of ``data_dir``."""
    data_dir = Path(data_dir)
    texts = [ex.text for ex in load_split(data_dir / "test.jsonl")]
    probes = parity_probes(tokenizer, texts, cfg.batch_sizes, cfg.lengths, cfg.seed)
    val = load_split(data_dir / "val.jsonl")
    return GateInputs(probes, agreement_batches(tokenizer, val, cfg.max_length, rows=cfg.agreement_rows))


# --------------------------------------------------------------------------- the gate


def compare_on_probes(engine: Runner, reference: Runner, probes: list[Probe]) -> dict[str, Any]:
    """Run both on every probe; the largest |difference| and where it is. Shapes must match."""
    worst = {"max_abs_diff": 0.0, "batch_size": None, "length": None, "row": None}
    cases = []
    for p in probes:
        ref = reference(p.input_ids, p.attention_mask)
        out = engine(p.input_ids, p.attention_mask)
        if out.shape != ref.shape:
            raise ParityError(
                f"output shape {list(out.shape)} != reference {list(ref.shape)} at batch size {p.batch_size}, length {p.length}"
            )
        diff = np.abs(out.astype(np.float64) - ref)
        d = float(diff.max())
        if not np.isfinite(d):
            d = float("inf")
        cases.append({"batch_size": p.batch_size, "length": p.length, "max_abs_diff": d})
        if d > worst["max_abs_diff"] or not np.isfinite(d):
            worst = {"max_abs_diff": d, "batch_size": p.batch_size, "length": p.length, "row": int(diff.max(axis=1).argmax())}
    return {**worst, "cases": cases}


def prediction_agreement(engine: Runner, reference: Runner, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Fraction of rows where both predict the same class; also the first disagreeing batch/row."""
    same = total = 0
    first = None
    for b, (ids, mask) in enumerate(batches):
        a, r = engine(ids, mask).argmax(-1), reference(ids, mask).argmax(-1)
        if first is None and (a != r).any():
            first = {"batch": b, "row": int(np.flatnonzero(a != r)[0]), "length": int(ids.shape[1])}
        same += int((a == r).sum())
        total += len(a)
    return {"agreement": same / max(total, 1), "rows": total, "first_disagreement": first}


def gate(engine: Runner, reference: Runner, precision: str, cfg: ExportConfig, inputs: GateInputs, name: str) -> dict[str, Any]:
    """Pass or raise ParityError: float engines within atol on every probe, int8 by prediction agreement."""
    probes = compare_on_probes(engine, reference, inputs.probes)
    where = f"batch size {probes['batch_size']}, length {probes['length']}, row {probes['row']}"
    result: dict[str, Any] = {"reference": reference.runtime, "max_abs_diff": probes["max_abs_diff"], "worst": where,
                              "cases": probes["cases"]}  # fmt: skip
    if precision in ("fp32", "fp16"):
        atol = cfg.atol if precision == "fp32" else cfg.atol_fp16
        result |= {"kind": "atol", "atol": atol}
        if not probes["max_abs_diff"] <= atol:
            raise ParityError(
                f"{name}: max |logit - {reference.runtime} logit| = {probes['max_abs_diff']:.3g} > atol {atol} "
                f"at {where} (export.atol{'_fp16' if precision == 'fp16' else ''})"
            )
    else:
        agree = prediction_agreement(engine, reference, inputs.agreement)
        result |= {"kind": "agreement", "min_agreement": cfg.min_agreement, **agree}
        if agree["agreement"] < cfg.min_agreement:
            raise ParityError(
                f"{name}: int8 predictions agree with the float source on {agree['agreement']:.4f} of {agree['rows']} "
                f"val rows < export.min_agreement {cfg.min_agreement} (first disagreement: {agree['first_disagreement']}; "
                f"largest logit difference {probes['max_abs_diff']:.3g} at {where})"
            )
    return result


# --------------------------------------------------------------------------- helpers


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


def copy_tokenizer(source_dir: Path, out_dir: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, out_dir / name)
            copied.append(name)
    if not copied:
        raise CheckpointError(f"{source_dir}: no tokenizer files to ship with the engine")
    return copied


def reference_runner(source_dir: Path, num_threads: int) -> Runner:
    """What an engine built from ``source_dir`` is compared with: the PyTorch model, or the source engine."""
    if (source_dir / MANIFEST).is_file():
        return load_engine(source_dir, num_threads, trust_torchscript=True)  # an engine an earlier stage of this pipeline built
    return TorchRunner(load_classifier(source_dir))


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


def export_onnx(source_dir: Path, cfg: ExportConfig, out_dir: Path, probes: list[Probe]) -> dict[str, Any]:
    """fp32 ONNX with dynamic batch and sequence axes: dynamo exporter, TorchScript exporter as fallback."""
    model = LogitsOnly(load_classifier(source_dir)).eval()
    path = out_dir / ENGINE_FILES["onnx"]
    max_positions = int(model.model.config.max_position_embeddings)
    try:
        _onnx_dynamo(model, trace_example(probes), path, cfg.opset, max_positions)
        exporter: dict[str, Any] = {"exporter": "torch.onnx dynamo"}
    except Exception as e:  # noqa: BLE001 - any dynamo failure: fall back, and say why
        for p in out_dir.glob("model.onnx*"):
            p.unlink()
        _onnx_torchscript(model, trace_example(probes), path, cfg.opset)
        exporter = {"exporter": "torch.onnx torchscript (fallback)", "dynamo_error": f"{type(e).__name__}: {str(e)[:300]}"}
    _finish_onnx(path)
    return {"format": "onnx", "precision": "fp32", "opset": cfg.opset, **exporter,
            "runtime": runtime_versions("torch", "onnx", "onnxruntime")}  # fmt: skip


def _onnx_dynamo(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int, max_positions: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("sequence", min=1, max=max_positions)
    dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed": we export no torchvision op
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)  # torch internals
        torch.onnx.export(
            model, example, str(path), input_names=ONNX_INPUTS, output_names=["logits"], opset_version=opset,
            dynamo=True, external_data=False, dynamic_shapes=dims, verbose=False,
        )  # fmt: skip
    registration.setLevel(level)


def _onnx_torchscript(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    with quiet_torch_deprecations(), torch.inference_mode():
        torch.onnx.export(
            model, example, str(path), input_names=ONNX_INPUTS, output_names=["logits"], opset_version=opset,
            dynamo=False, dynamic_axes=axes,
        )  # fmt: skip


def _finish_onnx(path: Path) -> None:
    """One self-contained file: fold any external weights back in, then check it."""
    import onnx  # noqa: PLC0415

    external = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)
    if external:  # the dynamo exporter writes model.onnx.data unless told otherwise
        model = onnx.load(str(path), load_external_data=True)
        onnx.save(model, str(path), save_as_external_data=False)
        for name in external:
            (path.parent / name).unlink()
    check_onnx(path)


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
        _onnx_torchscript(LogitsOnly(hf).eval(), trace_example(probes), raw, cfg.opset)
        for name, kwargs in recipes:
            try:
                opt = optimize_model(str(raw), model_type=model_type, **kwargs)
                opt.save_model_to_file(str(path), use_external_data_format=False)
                _finish_onnx(path)
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


def seal_engine(
    engine_dir: Path, info: dict[str, Any], source_dir: Path, variant: str, cfg: ExportConfig, inputs: GateInputs,
    reference: Runner | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Finish an engine directory the exporter (or quantizer) filled: tokenizer, config, gate, manifest.

    ``info`` is the exporter's answer. ``reference`` defaults to :func:`reference_runner`
    of ``source_dir``. Raises ParityError if the gate fails (the caller's atomic_dir then
    discards the directory). The directory is also a standard Hugging Face folder (see
    :func:`write_standard_files`), so stock clients load it without slimformer.
    """
    info = dict(info)
    fields = {"format": info.pop("format"), "precision": info.pop("precision"), "variant": variant,
              "source_model": str(source_dir), "labels": source_labels(source_dir), "opset": info.pop("opset", None)}  # fmt: skip
    runtime = info.pop("runtime", {})
    copy_tokenizer(source_dir, engine_dir)
    graph_inputs = engine_input_names(engine_dir, fields["format"])
    write_standard_files(engine_dir, source_dir, fields["labels"], graph_inputs, cfg.max_length)
    engine = RUNNERS[fields["format"]](engine_dir, info, cfg.num_threads)
    reference = reference or reference_runner(source_dir, cfg.num_threads)
    parity = gate(engine, reference, fields["precision"], cfg, inputs, variant)
    io_fields = {"inputs": [i for i in INPUTS if i["name"] in graph_inputs], "max_length": cfg.max_length}
    return write_manifest(engine_dir, **fields, parity=parity, runtime=runtime, extra=info | io_fields)


def engine_input_names(engine_dir: Path, fmt: str) -> list[str]:
    """The inputs the engine file takes, in order: read from the ONNX graph; the Runner contract otherwise."""
    if fmt != "onnx":
        return [i["name"] for i in INPUTS]
    import onnx  # noqa: PLC0415

    graph = onnx.load(str(engine_dir / ENGINE_FILES["onnx"]), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def model_config(source_dir: Path) -> dict[str, Any]:
    """The Hugging Face ``config.json`` behind ``source_dir``: its own, or (an engine directory from
    before engines carried one) that of the model its manifest names."""
    named = manifest_source_model(source_dir)
    for d in [source_dir] + ([Path(named)] if named else []):
        if (d / "config.json").is_file():
            return json.loads((d / "config.json").read_text(encoding="utf-8"))
    raise CheckpointError(f"{source_dir}: no config.json (nor in the model its manifest names) to ship with the engine")


def manifest_source_model(source_dir: Path) -> str:
    """The ``source_model`` an engine directory's manifest names ("" for a model directory)."""
    if (source_dir / MANIFEST).is_file():
        return str(read_manifest(source_dir).get("source_model", ""))
    return ""


def write_standard_files(engine_dir: Path, source_dir: Path, labels: list[str], graph_inputs: list[str], max_length: int) -> None:
    """Make ``engine_dir`` a folder stock clients load as it is.

    ``config.json``: the source model's config with ``id2label``/``label2id`` from the labels
    (what optimum's ``ORTModelForSequenceClassification`` and ``pipeline`` need).
    ``tokenizer_config.json``: ``model_input_names`` set to the graph's inputs, so
    ``session.run(None, dict(tokenizer(texts, return_tensors="np")))`` feeds exactly them (the
    graphs take no ``token_type_ids``), and ``model_max_length`` set to the length the
    engine was gated and measured at (``truncation=True`` then truncates as the benchmark
    does). ``tokenizer.json`` is written from the fast tokenizer if the source had none.
    """
    config = model_config(source_dir)
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}
    config["num_labels"] = len(labels)
    write_json(engine_dir / "config.json", config)
    tok_config_path = engine_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text(encoding="utf-8")) if tok_config_path.is_file() else {}
    tok_config["model_input_names"] = list(graph_inputs)
    tok_config["model_max_length"] = int(max_length)
    write_json(tok_config_path, tok_config)
    if not (engine_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(engine_dir)
        if not getattr(tokenizer, "is_fast", False):
            raise CheckpointError(f"{source_dir}: no fast tokenizer to write tokenizer.json from")
        tokenizer.backend_tokenizer.save(str(engine_dir / "tokenizer.json"))


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

