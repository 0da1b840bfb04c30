"""Measure every engine the same way, in one run: accuracy, latency, size, memory.

What is measured (DESIGN.md, "Benchmark method"):

- **Accuracy and macro-F1** on the full test split, tokenized by each engine's own tokenizer
  and run through the engine's own runtime (ONNX Runtime session, TorchScript module): one
  sentence per call as a server runs it (``accuracy``), and in padded length-grouped batches
  (``accuracy_padded``), with the share of rows predicted alike both ways (``batch_agreement``).
- **Latency** at batch 1 and at ``large_batch`` on real test sentences, each batch padded to its
  longest sentence. After a warm-up, the variants take turns in many short interleaved rounds
  (round r runs every variant on the same slice of the timed inputs; the order rotates every
  round), so machine drift hits them alike. Each input is timed ``repeats`` times per variant;
  p50/p95/p99 pool every call; every figure is also a ratio to ``teacher_pytorch`` (the
  fine-tuned teacher in PyTorch eager fp32) from the same run.
- **Size**: the files the engine ships (model file and tokenizer), zip-compressed size, and the
  parameter count read from the source model's safetensors header.
- **Peak RSS** of each variant in a fresh child process that loads it and runs the large
  batches once; the child imports only its own runtime, so an ONNX engine is not charged for torch.

Two baselines sit beside the engines: ``teacher_pytorch``, and ``onestep_int8_onnx``, the one step
a user would reach for (the teacher exported by optimum and dynamically int8-quantized by
ONNX Runtime, no distillation or pruning), built by its own stage (:mod:`slimformer.baselines`).

This module orchestrates; the timer and its statistics are :mod:`slimformer.measure`, the
machine fingerprint and thread pinning :mod:`slimformer.machine`, the peak-RSS child
:mod:`slimformer.memory`, what a variant is and ships :mod:`slimformer.variants`.
"""

from __future__ import annotations

import gc
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.baselines import ONESTEP, TEACHER
from slimformer.config import BenchmarkConfig
from slimformer.data import load_labels, load_split
from slimformer.engines import MANIFEST, EngineSkipped, Runner, read_manifest, source_labels
from slimformer.errors import SlimformerError
from slimformer.evaluate import padded, served_and_batched
from slimformer.machine import PinPlan, contention, cpu_counters, machine_fingerprint, pin_plan, pinned_to
from slimformer.memory import RSS_METHOD, peak_rss
from slimformer.measure import latency_stats, round_slices, run_rounds, schedule, speedups, warm_up
from slimformer.modeling import check_model_dir, load_tokenizer
from slimformer.training import encode
from slimformer.variants import Variant, open_runner, parameter_count, size_infos

SKIP_DIRS = ("best",)  # the report stage's copy of the selected engine lives under the engines root


# ------------------------------------------------------------------------------ inputs


Batches = list[tuple[np.ndarray, np.ndarray]]  # (input_ids, attention_mask), int64 (batch, seq)


@dataclass(frozen=True)
class LatencySets:
    """Which test sentences are timed: the same ones for every variant (each tokenizes them itself)."""

    single: list[int]  # test rows timed at batch 1
    batches: list[list[int]]  # test rows of each large batch


def latency_sets(n_rows: int, cfg: BenchmarkConfig) -> LatencySets:
    """A seeded sample of ``batch1_samples`` rows and ``large_batches`` random batches of ``large_batch`` rows."""
    rng = random.Random(cfg.seed)
    single = rng.sample(range(n_rows), min(cfg.batch1_samples, n_rows))
    pool: list[int] = []
    batches = []
    for _ in range(cfg.large_batches):
        if len(pool) < cfg.large_batch:  # without replacement until the split runs out
            pool = rng.sample(range(n_rows), n_rows)
        batches.append([pool.pop() for _ in range(min(cfg.large_batch, n_rows))])
    return LatencySets(single, batches)


def variant_inputs(tokenizer, examples, sets: LatencySets, cfg: BenchmarkConfig) -> dict[str, Batches]:
    """The timed batches of one variant, tokenized by its own tokenizer: ``{"batch_1": [...], "batch_32": [...]}``."""
    data = encode(tokenizer, examples, cfg.max_length)
    pad = tokenizer.pad_token_id
    return {
        "batch_1": [padded(data, [i], pad) for i in sets.single],
        f"batch_{cfg.large_batch}": [padded(data, rows, pad) for rows in sets.batches],
    }


# ------------------------------------------------------------------------------ accuracy


def accuracy(runner: Runner, tokenizer, examples, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``runner`` over ``examples`` (the full test split), as served and batched.

    ``accuracy``/``macro_f1``: one sentence per call, unpadded, as ``slimformer predict`` and
    ``serve`` run it. ``accuracy_padded``/``macro_f1_padded``: length-grouped batches of
    ``eval_batch_size`` padded to their longest sentence. ``batch_agreement`` is the share of
    rows whose predicted class is the same both ways. Float engines agree on every row (up to
    exact ties); dynamic int8 quantizes activations with one scale per tensor computed over
    the whole batch at run time, so a row's prediction can move with its batch-mates.
    """
    data = encode(tokenizer, examples, cfg.max_length)
    t0 = time.perf_counter()
    return served_and_batched(runner, data, tokenizer.pad_token_id, cfg.eval_batch_size) | {
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }


# ------------------------------------------------------------------------------ the whole benchmark


def discover(engines_root: str | Path, skip: tuple[str, ...] = SKIP_DIRS) -> list[Variant]:
    """Every engine directory (one with a manifest) directly under ``engines_root``, by variant name."""
    root = Path(engines_root)
    if not root.is_dir():
        raise SlimformerError(f"{root}: engines directory not found (run the export and quantize stages)")
    out: dict[str, Variant] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in skip):
        if not (d / MANIFEST).is_file():
            continue
        m = read_manifest(d)
        if m["variant"] in out or m["variant"] in (TEACHER, ONESTEP):
            raise SlimformerError(f"{d}: variant name {m['variant']!r} is used twice")
        out[m["variant"]] = Variant(m["variant"], "engine", d, "candidate", m)
    return list(out.values())


def _check_labels(variant: Variant, labels: list[str]) -> None:
    got = (variant.manifest or {}).get("labels") if variant.kind == "engine" else source_labels(variant.path)
    if got and list(got) != list(labels):
        raise SlimformerError(f"{variant.path}: class names {list(got)} differ from the data's {list(labels)}; "
                              "the accuracy would be meaningless")  # fmt: skip


def _describe(variant: Variant) -> dict[str, Any]:
    m = variant.manifest or {}
    out = {"role": variant.role, "path": str(variant.path), "status": m.get("status", "ok"),
           "format": m.get("format", "pytorch"), "precision": m.get("precision", "fp32")}  # fmt: skip
    if variant.kind == "engine" and m.get("source_model"):
        out["source_model"] = m["source_model"]
    if variant.name == ONESTEP:
        out["built_with"] = m.get("tool")
        if m.get("optimum_error"):
            out["optimum_error"] = m["optimum_error"]
    return out


def benchmark(
    cfg: BenchmarkConfig,
    engines_root: str | Path,
    teacher_dir: str | Path,
    data_dir: str | Path,
    onestep_dir: str | Path | None,
    log=print,
) -> dict[str, Any]:
    """Measure the teacher in PyTorch, the one-step baseline and every engine under ``engines_root``.

    Returns the benchmark document (``machine``, ``settings``, ``variants``). Engines skipped at
    export, or that cannot run on this machine, appear with their status and reason and no
    numbers. ``onestep_dir`` (None when ``cfg.onestep == "none"``) holds the one-step baseline
    the ``onestep_baseline`` stage built with the same ``cfg.onestep``.
    """
    t_start = time.perf_counter()
    machine = machine_fingerprint(cfg.num_threads)
    teacher_dir, data_dir = Path(teacher_dir), Path(data_dir)
    check_model_dir(teacher_dir)
    labels = load_labels(data_dir)
    test = load_split(data_dir / "test.jsonl")
    engines = discover(engines_root)  # before any model loads: a wrong path fails at once
    variants = [Variant(TEACHER, "pytorch", teacher_dir, "baseline")]
    onestep_info: dict[str, Any] = {}
    if cfg.onestep != "none":
        if onestep_dir is None:
            raise SlimformerError("benchmark.onestep is set but no one-step baseline directory was given")
        m = read_manifest(onestep_dir)  # built by the onestep_baseline stage; load_engine verifies it
        if m.get("requested_method") != cfg.onestep:
            raise SlimformerError(f"{onestep_dir}: one-step baseline built with {m.get('requested_method')!r}, params ask for "
                                  f"{cfg.onestep!r} (rerun the onestep_baseline stage)")  # fmt: skip
        onestep_info = {"build_seconds": m.get("build_seconds"), "tool": m.get("tool")}
        variants.append(Variant(ONESTEP, "engine", Path(onestep_dir), "baseline", m))
    variants += engines
    results: dict[str, dict[str, Any]] = {v.name: _describe(v) for v in variants}

    pin = pin_plan(cfg.num_threads, cfg.pin_threads)
    machine["pinning"] = pin.to_dict()
    runners, inputs = _prepare(variants, results, labels, test, cfg, pin, log)
    for name, runner in runners.items():
        warm_up(runner, inputs[name], cfg.warmup)
    order = schedule(list(runners), cfg.rounds, cfg.seed)
    sizes = {s: len(b) for s, b in inputs[TEACHER].items()}  # the same inputs for every variant
    slices = {s: round_slices(n, cfg.repeats, cfg.rounds) for s, n in sizes.items()}
    t0, cpu0 = time.perf_counter(), cpu_counters()
    with pinned_to(pin.timing_core):  # after the warm-up: PyTorch's threads, started by now, stay unpinned
        times = run_rounds(runners, inputs, order, slices, log=log)
    timing_seconds = time.perf_counter() - t0
    machine["timing_contention"] = contention(cpu0, cpu_counters(), timing_seconds, machine["usable_cores"])
    log(f"benchmark: while timing, other processes used {_share(machine['timing_contention'], 'other_processes_cpu_share')} "
        f"of the cores, steal {_share(machine['timing_contention'], 'steal_share')}")  # fmt: skip
    _latency_results(results, times, cfg, log)
    measured = [v for v in variants if v.name in runners]
    del runners
    gc.collect()
    if cfg.peak_rss:  # one child per variant, ``num_threads`` at a time: a process's peak RSS is its own
        with ThreadPoolExecutor(max_workers=max(1, cfg.num_threads)) as pool:
            rss = pool.map(lambda v: peak_rss(v, inputs[v.name][f"batch_{cfg.large_batch}"], cfg.num_threads), measured)
            for v, r in zip(measured, rss, strict=True):
                results[v.name] |= r
    machine["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return {
        "machine": machine,
        "settings": cfg.to_dict() | {"test_rows": len(test), "rounds_order": order,
                                     "rss_method": RSS_METHOD if cfg.peak_rss else None},  # fmt: skip
        "baseline": TEACHER,
        "onestep": onestep_info,
        "timing_seconds": round(timing_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "variants": results,
    }


def _share(d: dict, key: str) -> str:
    return "n/a" if d.get(key) is None else f"{100 * d[key]:.1f}%"


def _prepare(
    variants: list[Variant],
    results: dict[str, dict[str, Any]],
    labels: list[str],
    test,
    cfg: BenchmarkConfig,
    pin: PinPlan,
    log,
) -> tuple[dict[str, Runner], dict[str, dict[str, Batches]]]:
    """Open every runnable variant; fill in accuracy, size and parameters; tokenize its timed batches."""
    sets = latency_sets(len(test), cfg)
    sizes = size_infos([v for v in variants if results[v.name]["status"] == "ok"], cfg.zip_level, cfg.num_threads)
    runners: dict[str, Runner] = {}
    inputs: dict[str, dict[str, Batches]] = {}
    for v in variants:
        r = results[v.name]
        if r["status"] != "ok":
            r["reason"] = (v.manifest or {}).get("reason", "no reason recorded")
            continue
        _check_labels(v, labels)
        try:
            runner = open_runner(v, cfg.num_threads, pin)  # engines: every sha256 verified first
        except EngineSkipped as e:  # e.g. a TensorRT engine built elsewhere, measured on a machine without CUDA
            r |= {"status": "skipped", "reason": f"cannot run on this machine: {e}"}
            continue
        tok = load_tokenizer(v.path)
        r["runtime"] = runner.runtime
        r |= accuracy(runner, tok, test, cfg)
        r |= sizes[v.name]
        r |= parameter_count(v)
        runners[v.name], inputs[v.name] = runner, variant_inputs(tok, test, sets, cfg)
        log(f"benchmark: {v.name}: accuracy {r['accuracy']:.4f} one sentence a call, {r['accuracy_padded']:.4f} in padded "
            f"batches of {cfg.eval_batch_size} (same prediction on {100 * r['batch_agreement']:.2f}% of rows), "
            f"macro-F1 {r['macro_f1']:.4f} ({r['runtime']})")  # fmt: skip
    if TEACHER not in runners:
        raise SlimformerError(f"{TEACHER} could not be measured; every ratio needs it")
    return runners, inputs


def _latency_results(
    results: dict[str, dict[str, Any]], times: dict[str, dict[str, list[list[float]]]], cfg: BenchmarkConfig, log
) -> None:
    """Latency statistics of every timed variant, and their ratios to the teacher (and the one-step baseline)."""
    sizes = {"batch_1": 1, f"batch_{cfg.large_batch}": cfg.large_batch}
    for name in times:
        results[name]["latency"] = {s: latency_stats(times[name][s], bs) for s, bs in sizes.items()}
    for name in times:
        r, lat = results[name], results[name]["latency"]
        r["speedup_vs_teacher"] = {s: speedups(results[TEACHER]["latency"][s], lat[s]) for s in sizes}
        r["size_ratio_vs_teacher"] = round(results[TEACHER]["model_bytes"] / r["size_bytes"], 3)
        if ONESTEP in times:
            r["speedup_vs_onestep"] = {s: speedups(results[ONESTEP]["latency"][s], lat[s]) for s in sizes}
        log(f"benchmark: {name}: batch-1 p50 {lat['batch_1']['p50_ms']:.3f} ms, x{r['speedup_vs_teacher']['batch_1']['p50']:.2f} "
            f"vs {TEACHER}; batch-{cfg.large_batch} p50 {lat[f'batch_{cfg.large_batch}']['p50_ms']:.1f} ms")  # fmt: skip
