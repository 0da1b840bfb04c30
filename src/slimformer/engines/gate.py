"""The parity gate every engine passes, its inputs, and sealing a finished engine directory.

Used by every stage that builds an engine (export, PTQ, QAT). Imports torch and transformers
(through the reference model and the tokenizer), unlike the rest of ``slimformer.engines``.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.config import ExportConfig
from slimformer.contract import TOKENIZER_FILES
from slimformer.data import load_split
from slimformer.engines.manifest import ENGINE_FILES, INPUTS, MANIFEST, read_manifest, source_labels, write_manifest
from slimformer.engines.runners import RUNNERS, ParityError, Runner, TorchRunner, load_engine
from slimformer.errors import CheckpointError
from slimformer.evaluate import labelled_batches
from slimformer.io import write_json
from slimformer.modeling import load_classifier, load_tokenizer

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
    return [(b.input_ids, b.attention_mask) for b in labelled_batches(tokenizer, examples, max_length, batch_size)]


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


# --------------------------------------------------------------------------- sealing


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
