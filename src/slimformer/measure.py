"""The one way slimformer measures: call latency, its statistics, shipped size, and safetensors headers.

Every stage that reports a latency (the pruning stages, the benchmark) times calls with
:func:`time_calls` and summarises them with :func:`percentiles` / :func:`latency_stats`; every
size is a DEFLATE zip of the files shipped (:func:`zip_size`); every parameter count read from
a file comes from its safetensors header (:func:`safetensors_header`), no tensor loaded.

Imports numpy and the standard library only: the benchmark's peak-RSS child imports this,
and an ONNX engine's memory must not include torch.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 95, 99)

# ------------------------------------------------------------------------------ the timer


def time_calls(call: Callable[..., Any], inputs: Sequence[tuple]) -> list[float]:
    """Milliseconds of each ``call(*args)`` for ``args`` in ``inputs``, in order."""
    out = []
    for args in inputs:
        t0 = time.perf_counter_ns()
        call(*args)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def schedule(names: list[str], rounds: int, seed: int) -> list[list[str]]:
    """The order of every round: each round runs every variant once.

    A seeded shuffle gives a base order; round r rotates it by r, so across ``len(names)``
    rounds every variant runs once in every position (first, last, and each in between).
    Each further cycle of ``len(names)`` rounds starts from a new shuffle; no variant opens
    two consecutive rounds.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names: {names}")
    rng = random.Random(seed)
    out: list[list[str]] = []
    n = len(names)
    base: list[str] = []
    for r in range(rounds):
        if n and r % n == 0:
            base = list(names)
            rng.shuffle(base)
            if out and n > 1 and base[0] == out[-1][0]:  # no variant opens two rounds in a row
                base = base[1:] + base[:1]
        k = r % n if n else 0
        out.append(base[k:] + base[:k])
    return out


def round_slices(n_items: int, repeats: int, rounds: int) -> list[list[int]]:
    """Which inputs each round times: the item indices ``0..n_items-1`` repeated ``repeats`` times,
    cut into ``rounds`` contiguous slices of (almost) equal length. Every item is timed exactly
    ``repeats`` times in all; a round may be empty when there are fewer calls than rounds.
    """
    calls = [i for _ in range(repeats) for i in range(n_items)]
    bounds = [len(calls) * r // rounds for r in range(rounds + 1)]
    return [calls[bounds[r] : bounds[r + 1]] for r in range(rounds)]


def warm_up(call: Callable[..., Any], inputs: dict[str, list[tuple]], calls: int) -> None:
    """``calls`` untimed batch-1 calls and a quarter as many (at least one) of each larger set."""
    for name, batches in inputs.items():
        n = calls if name == "batch_1" else max(1, calls // 4)
        for i in range(n if batches else 0):
            call(*batches[i % len(batches)])


def run_rounds(
    calls: dict[str, Callable[..., Any]],
    inputs: dict[str, dict[str, list[tuple]]],
    order: list[list[str]],
    slices: dict[str, list[list[int]]],
    pause_s: float = 0.01,
    log=None,
) -> dict[str, dict[str, list[list[float]]]]:
    """Time the variants round by round: ``{variant: {set: [ms per call] per round}}``.

    Round r runs the variants in the order ``order[r]``; each runs, for every input set (e.g.
    ``batch_1``), the inputs ``slices[set][r]`` (indices into its list). The garbage collector is
    off while a variant runs (collected between turns), and a short pause between turns lets the
    previous runtime's spinning worker threads go idle. Everything alive before the first round
    is frozen out of the collector's reach, so a collection between turns only walks what the
    rounds allocated (a full one costs a quarter of a second with transformers loaded).
    """
    times: dict[str, dict[str, list[list[float]]]] = {v: {s: [] for s in inputs[v]} for v in calls}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    try:
        for r, round_order in enumerate(order):
            t0 = time.perf_counter()
            for name in round_order:
                gc.collect()
                time.sleep(pause_s)
                gc.disable()
                for set_name, batches in inputs[name].items():
                    times[name][set_name].append(time_calls(calls[name], [batches[i] for i in slices[set_name][r]]))
                gc.enable()
            if log is not None and (r + 1) % max(1, len(order) // 10) == 0:  # about ten lines in all
                log(f"benchmark: round {r + 1}/{len(order)} took {time.perf_counter() - t0:.1f} s")
    finally:
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
    return times


# ------------------------------------------------------------------------------ statistics


def percentiles(samples_ms: Sequence[float] | np.ndarray, qs: tuple[int, ...] = PERCENTILES) -> dict[str, float]:
    """``{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}`` by linear interpolation (numpy's default)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples")
    return {f"p{q}_ms": float(np.percentile(x, q)) for q in qs}


def latency_stats(rounds_ms: list[list[float]], batch_size: int) -> dict[str, Any]:
    """Pooled percentiles, mean, throughput and the per-round p50 of one variant at one batch size.

    ``rounds_ms[r]`` holds the milliseconds of every call in round r.
    """
    pooled = [t for r in rounds_ms for t in r]
    total_s = sum(pooled) / 1000
    return {
        **{k: round(v, 4) for k, v in percentiles(pooled).items()},
        "mean_ms": round(float(np.mean(pooled)), 4),
        "calls": len(pooled),
        "throughput_sps": round(batch_size * len(pooled) / total_s, 2) if total_s > 0 else None,
        "round_p50_ms": [round(float(np.median(r)), 4) if r else None for r in rounds_ms],  # None: round had no call
    }


def speedups(baseline: dict[str, Any], stats: dict[str, Any]) -> dict[str, float | None]:
    """``baseline / variant`` for p50/p95/p99, plus the median over rounds of the per-round p50 ratio.

    Both come from the same run; the per-round ratio compares figures taken minutes apart at most.
    """
    out: dict[str, float | None] = {f"p{q}": round(baseline[f"p{q}_ms"] / stats[f"p{q}_ms"], 3) for q in PERCENTILES}
    pairs = zip(baseline["round_p50_ms"], stats["round_p50_ms"], strict=True)
    per_round = [b / v for b, v in pairs if b is not None and v is not None]
    out["p50_round_median"] = round(float(np.median(per_round)), 3) if per_round else None
    out["p50_round_min"] = round(min(per_round), 3) if per_round else None
    out["p50_round_max"] = round(max(per_round), 3) if per_round else None
    return out


# ------------------------------------------------------------------------------ size


def zip_size(files: Sequence[Path], root: Path, level: int | None = 9) -> int:
    """Bytes of a DEFLATE zip (``level``; None: zlib's default) of ``files`` (named relative to
    ``root``), built in a temporary file.

    Written in 1 MiB chunks: zlib lets go of the GIL while it compresses one, so sizes of
    several files can be computed on parallel threads.
    """
    with tempfile.TemporaryFile() as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as z:
            for p in files:
                big = p.stat().st_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule in ZipFile.write
                with p.open("rb") as src, z.open(p.relative_to(root).as_posix(), "w", force_zip64=big) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        return f.tell()


def file_sizes(path: str | Path, level: int | None = None) -> dict[str, int]:
    """Bytes of one file on disk (``dense_bytes``) and inside a DEFLATE zip of it alone (``zip_bytes``)."""
    path = Path(path)
    return {"dense_bytes": path.stat().st_size, "zip_bytes": zip_size([path], path.parent, level)}


# ------------------------------------------------------------------------------ safetensors header


def safetensors_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """``(header length, header)`` of a safetensors file: its JSON header alone, no tensor read."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


def safetensors_shapes(path: str | Path) -> dict[str, list[int]]:
    """``{tensor name: shape}`` of a safetensors file, from its header."""
    return {k: v["shape"] for k, v in safetensors_header(path)[1].items() if k != "__metadata__"}


def safetensors_payload_end(path: str | Path) -> int:
    """The byte offset where a safetensors file's last tensor ends (a shorter file is truncated)."""
    n, header = safetensors_header(path)
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def safetensors_parameters(path: str | Path) -> int:
    """Number of values in a safetensors file (dense count: zeros of unstructured pruning included)."""
    return int(sum(int(np.prod(shape)) for shape in safetensors_shapes(path).values()))
