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
ONNX Runtime, no distillation or pruning), built by :func:`build_onestep_baseline`.

This module imports no torch or transformers at the top: the peak-RSS child imports it, and
an ONNX engine's memory must not include them. Functions that tokenize import them lazily.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.config import BenchmarkConfig
from slimformer.engines import (
    ENGINE_FILES,
    MANIFEST,
    EngineSkipped,
    OrtRunner,
    TokenTypeZeros,
    Runner,
    load_engine,
    read_manifest,
    runtime_versions,
    verify_engine,
    write_manifest,
)
from slimformer.errors import CheckpointError, SlimformerError
from slimformer.io import atomic_dir, sha256_file
from slimformer.measure import (
    latency_stats,
    round_slices,
    run_rounds,
    safetensors_parameters,
    schedule,
    speedups,
    warm_up,
    zip_size,
)

TEACHER = "teacher_pytorch"
ONESTEP = "onestep_int8_onnx"
SKIP_DIRS = ("best",)  # the report stage's copy of the selected engine lives under the engines root
CPU_FLAGS = ("sse4_2", "fma", "f16c", "avx", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip
VERSIONS = ("torch", "onnxruntime", "onnx", "transformers", "optimum", "optimum-onnx", "numpy")


@dataclass(frozen=True)
class Variant:
    """One thing to measure: an engine directory, or a model directory run in PyTorch eager."""

    name: str
    kind: str  # "engine" (an engine directory with a manifest) or "pytorch" (a model directory)
    path: Path
    role: str = "candidate"  # "candidate" (a pipeline engine) or "baseline"
    manifest: dict | None = None


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


def padded(data, rows: list[int], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` of an Encoded split padded to their longest sentence: (input_ids, attention_mask) int64."""
    from slimformer.training import collate  # noqa: PLC0415 - torch stays out of the RSS child

    b = collate(data, rows, pad_id)
    return b.input_ids.numpy(), b.attention_mask.numpy()


def variant_inputs(tokenizer, examples, sets: LatencySets, cfg: BenchmarkConfig) -> dict[str, Batches]:
    """The timed batches of one variant, tokenized by its own tokenizer: ``{"batch_1": [...], "batch_32": [...]}``."""
    from slimformer.training import encode  # noqa: PLC0415

    data = encode(tokenizer, examples, cfg.max_length)
    pad = tokenizer.pad_token_id
    return {
        "batch_1": [padded(data, [i], pad) for i in sets.single],
        f"batch_{cfg.large_batch}": [padded(data, rows, pad) for rows in sets.batches],
    }


# ------------------------------------------------------------------------------ runners


def open_runner(variant: Variant, num_threads: int, worker_cores: tuple[int, ...] = ()) -> Runner:
    """The Runner of ``variant``: ``load_engine`` (sha256-verified) or the PyTorch model itself.
    ``worker_cores`` pins ONNX Runtime's worker threads (see :func:`pin_plan`)."""
    if variant.kind == "pytorch":
        import torch  # noqa: PLC0415

        from slimformer.engines import TorchRunner  # noqa: PLC0415
        from slimformer.modeling import load_classifier  # noqa: PLC0415

        torch.set_num_threads(num_threads)
        return TorchRunner(load_classifier(variant.path))
    # The engines under artifacts/engines are the ones this pipeline built (TorchScript included).
    runner = load_engine(variant.path, num_threads, worker_cores, trust_torchscript=True)
    if isinstance(runner, OrtRunner) and "token_type_ids" in runner.input_names:
        return TokenTypeZeros(runner)
    return runner


def predict(runner: Runner, data, pad_id: int, batch_size: int) -> np.ndarray:
    """Logits (n, classes) of every row of an Encoded split, in order; batches grouped by length."""
    from slimformer.training import batch_order  # noqa: PLC0415

    order = batch_order([len(x) for x in data.input_ids], batch_size, shuffle=False, seed=0, group_by_length=True)
    out: np.ndarray | None = None
    for rows in order:
        logits = runner(*padded(data, rows, pad_id))
        if out is None:
            out = np.zeros((len(data), logits.shape[-1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None, "empty split"
    return out


def accuracy(runner: Runner, tokenizer, examples, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``runner`` over ``examples`` (the full test split), as served and batched.

    ``accuracy``/``macro_f1``: one sentence per call, unpadded, as ``slimformer predict`` and
    ``serve`` run it. ``accuracy_padded``/``macro_f1_padded``: length-grouped batches of
    ``eval_batch_size`` padded to their longest sentence. ``batch_agreement`` is the share of
    rows whose predicted class is the same both ways. Float engines agree on every row (up to
    exact ties); dynamic int8 quantizes activations with one scale per tensor computed over
    the whole batch at run time, so a row's prediction can move with its batch-mates.
    """
    from slimformer.training import classification_metrics, encode  # noqa: PLC0415

    data = encode(tokenizer, examples, cfg.max_length)
    labels = np.asarray(data.labels)
    t0 = time.perf_counter()
    single = predict(runner, data, tokenizer.pad_token_id, 1)
    batched = predict(runner, data, tokenizer.pad_token_id, cfg.eval_batch_size)
    served, padded_ = classification_metrics(single, labels), classification_metrics(batched, labels)
    same = single.argmax(-1) == batched.argmax(-1)
    return {
        **served,
        "accuracy_padded": padded_["accuracy"],
        "macro_f1_padded": padded_["macro_f1"],
        "batch_agreement": float(same.mean()),
        "batch_disagreements": int((~same).sum()),
        "test_rows": len(data),
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }


# ------------------------------------------------------------------------------ timing


def pin_plan(num_threads: int, enabled: bool = True) -> dict[str, Any]:
    """Which core times the calls and which cores ONNX Runtime's workers use, or why nothing is pinned.

    The timing thread is pinned to the first usable core and each of the ``num_threads - 1``
    ONNX Runtime worker threads to one of the next cores, so the scheduler cannot stack a call's
    threads on one core. Left to the scheduler on this 2-core machine, the batch-1 speedups of
    the same engines varied by up to 15% from one process to the next (six processes); pinned,
    by 4 to 7% (five). PyTorch's own threads are not pinned.
    """
    if not enabled:
        return {"pinned": False, "reason": "benchmark.pin_threads is false"}
    if not hasattr(os, "sched_getaffinity"):
        return {"pinned": False, "reason": "thread affinity is not available on this platform"}
    cores = sorted(os.sched_getaffinity(0))
    if num_threads < 2 or len(cores) < num_threads:
        return {"pinned": False, "reason": f"{num_threads} thread(s) on {len(cores)} usable core(s): nothing to place"}
    return {"pinned": True, "timing_core": cores[0], "ort_worker_cores": cores[1:num_threads]}


@contextmanager
def pinned_to(core: int | None):
    """Run the block with the calling thread on ``core`` (None: unchanged); the affinity is restored after."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})  # Linux: pid 0 is the calling thread; threads started earlier keep theirs
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_counters() -> dict[str, float] | None:
    """Machine-wide busy and steal CPU seconds (``/proc/stat``) and this process's CPU seconds; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy_s": (user + nice + system + irq + softirq) / tick, "steal_s": steal / tick, "own_s": time.process_time()}


def contention(before: dict | None, after: dict | None, wall_s: float, cores: int) -> dict[str, float | None]:
    """Shares of the cores' time while the rounds ran: other processes' CPU, and steal (a hypervisor
    running other guests on this machine's cores). Either makes latency noisier; the load average
    cannot tell them from the benchmark's own threads."""
    if before is None or after is None or wall_s <= 0:
        return {"other_processes_cpu_share": None, "steal_share": None}
    capacity = wall_s * max(1, cores)
    other = (after["busy_s"] - before["busy_s"]) - (after["own_s"] - before["own_s"])
    return {
        "other_processes_cpu_share": round(max(0.0, other) / capacity, 4),
        "steal_share": round(max(0.0, after["steal_s"] - before["steal_s"]) / capacity, 4),
    }


# ------------------------------------------------------------------------------ size, parameters, memory


def shipped_files(variant: Variant) -> list[Path]:
    """What deploying ``variant`` copies: every file its manifest lists (model file and tokenizer),
    or for a model directory its config, safetensors and tokenizer files."""
    if variant.kind == "engine":
        assert variant.manifest is not None
        return [variant.path / name for name in sorted(variant.manifest["files"])]
    skip = {"slimformer.json"}  # training provenance, not needed to serve
    return sorted(p for p in variant.path.iterdir() if p.is_file() and p.name not in skip)


def size_info(variant: Variant, level: int) -> dict[str, int]:
    files = shipped_files(variant)
    model_file = (ENGINE_FILES[variant.manifest["format"]] if variant.kind == "engine" and variant.manifest
                  else "model.safetensors")  # fmt: skip
    return {
        "size_bytes": sum(p.stat().st_size for p in files),
        "model_bytes": (variant.path / model_file).stat().st_size,
        "zip_bytes": zip_size(files, variant.path, level),
    }


def size_infos(variants: list[Variant], level: int, threads: int) -> dict[str, dict[str, int]]:
    """:func:`size_info` of every variant, ``threads`` at a time (zip compression dominates)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(zip((v.name for v in variants), pool.map(lambda v: size_info(v, level), variants), strict=True))


def source_model_dir(manifest: dict[str, Any], hops: int = 5) -> Path | None:
    """The model directory an engine was built from, following engine-to-engine sources (int8 from fp32 ONNX).

    ``source_model`` paths are as the export stage wrote them (relative to the repository root).
    """
    for _ in range(hops):
        src = manifest.get("source_model")
        if not src:
            return None
        path = Path(src)
        if (path / "model.safetensors").is_file():
            return path
        if not (path / MANIFEST).is_file():
            return None
        manifest = read_manifest(path)
    return None


def parameter_count(variant: Variant) -> dict[str, Any]:
    """``{"parameters": n, "parameters_from": where}``; the manifest's own count wins if it has one."""
    if variant.manifest and isinstance(variant.manifest.get("parameters"), int):
        return {"parameters": variant.manifest["parameters"], "parameters_from": "manifest"}
    src = variant.path if variant.kind == "pytorch" else source_model_dir(variant.manifest or {})
    if src is None:
        return {"parameters": None, "parameters_from": "source model not found"}
    return {"parameters": safetensors_parameters(src / "model.safetensors"), "parameters_from": str(src / "model.safetensors")}


RSS_METHOD = (
    "fresh child process per variant: VmHWM (peak resident set) after importing only its runtime, loading the "
    "variant and running the large batches once (peak_rss_mb); rss_delta_mb = that peak minus VmRSS after the imports"
)


def _proc_status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB. (``ru_maxrss`` is no use in a child: Linux
    carries the parent's high-water mark across fork and exec.)"""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {key}")


def rss_child(spec_json: str, batches_npz: str) -> None:
    """Body of the peak-RSS child process: prints one JSON line ``{peak_rss_mb, base_rss_mb}``."""
    spec = json.loads(spec_json)
    if spec["kind"] == "pytorch":
        import torch  # noqa: F401, PLC0415
        import transformers  # noqa: F401, PLC0415
    elif spec["format"] == "onnx":
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: F401, PLC0415
    else:
        import torch  # noqa: F401, PLC0415
    base = _proc_status_mb("VmRSS")
    variant = Variant(spec["name"], spec["kind"], Path(spec["path"]))
    if variant.kind == "engine":
        variant = Variant(variant.name, "engine", variant.path, manifest=read_manifest(variant.path))
    runner = open_runner(variant, spec["num_threads"])
    with np.load(batches_npz) as z:
        for i in range(len(z.files) // 2):
            runner(z[f"ids{i}"], z[f"mask{i}"])
    peak = _proc_status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "base_rss_mb": round(base, 1)}))


def peak_rss(variant: Variant, batches: Batches, num_threads: int, timeout_s: float = 600) -> dict[str, Any]:
    """Peak RSS (MiB) of ``variant`` in a fresh child process (see :data:`RSS_METHOD`)."""
    fmt = variant.manifest["format"] if variant.manifest else "pytorch"
    spec = {"name": variant.name, "kind": variant.kind, "path": str(variant.path.resolve()), "format": fmt,
            "num_threads": num_threads}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rss.") as tmp:
        npz = Path(tmp) / "batches.npz"
        np.savez(npz, **{f"{k}{i}": a for i, (ids, mask) in enumerate(batches) for k, a in (("ids", ids), ("mask", mask))})
        code = "import sys; from slimformer.benchmark import rss_child; rss_child(sys.argv[1], sys.argv[2])"
        env = dict(os.environ, OMP_NUM_THREADS=str(num_threads))
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec), str(npz)], capture_output=True,
                              text=True, timeout=timeout_s, env=env)  # fmt: skip
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"peak_rss_mb": None, "rss_delta_mb": None, "rss_error": tail[0][:300]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": got["peak_rss_mb"], "rss_delta_mb": round(got["peak_rss_mb"] - got["base_rss_mb"], 1)}


# ------------------------------------------------------------------------------ machine


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_fingerprint(num_threads: int) -> dict[str, Any]:
    """What a latency figure depends on besides the engine: CPU, its flags, threads, library versions."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())  # the first CPU's entry
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or "unknown"
    flags = set(info.get("flags", "").split())
    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith(("OPENBLAS", "OMP_", "MKL_", "KMP_", "ORT_")) or k == "GOTO_NUM_THREADS"}  # fmt: skip
    return {
        "cpu_model": model,
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "cpu_flags_all_avx512": sorted(f for f in flags if f.startswith("avx512")),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_used": num_threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in VERSIONS},
        "thread_env": env,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


# ------------------------------------------------------------------------------ the one-step baseline


def _teacher_labels(teacher_dir: Path) -> list[str]:
    id2label = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8")).get("id2label", {})
    return [id2label[k] for k in sorted(id2label, key=int)]


def _onestep_optimum(teacher_dir: Path, tmp: Path) -> dict[str, Any]:
    """optimum: ``ORTModelForSequenceClassification(export=True)``, then ``ORTQuantizer`` with the AVX2 dynamic config."""
    import logging  # noqa: PLC0415

    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer  # noqa: PLC0415
    from optimum.onnxruntime.configuration import AutoQuantizationConfig  # noqa: PLC0415

    import torch  # noqa: PLC0415

    logging.getLogger("optimum").setLevel(logging.ERROR)
    with warnings.catch_warnings():  # optimum's exporter choices, not ours to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ORTModelForSequenceClassification.from_pretrained(teacher_dir, export=True, local_files_only=True)
    qconfig = AutoQuantizationConfig.avx2(is_static=False)
    out = tmp / "quantized"
    ORTQuantizer.from_pretrained(model).quantize(save_dir=out, quantization_config=qconfig)
    for p in out.iterdir():  # model_quantized.onnx, ort_config.json, config.json, tokenizer files
        shutil.move(p, tmp / (ENGINE_FILES["onnx"] if p.name == "model_quantized.onnx" else p.name))
    out.rmdir()
    return {"tool": "optimum", "steps": "ORTModelForSequenceClassification.from_pretrained(export=True) + "
            "ORTQuantizer.quantize(AutoQuantizationConfig.avx2(is_static=False))", "quantization": str(qconfig)}  # fmt: skip


def _onestep_onnxruntime(teacher_dir: Path, tmp: Path) -> dict[str, Any]:
    """Fallback: ``torch.onnx.export`` (TorchScript exporter) + ``onnxruntime.quantization.quantize_dynamic``."""
    import torch  # noqa: PLC0415
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    from slimformer.contract import TOKENIZER_FILES  # noqa: PLC0415
    from slimformer.modeling import load_classifier  # noqa: PLC0415

    class Logits(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    model = Logits(load_classifier(teacher_dir)).eval()
    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    fp32 = tmp / "fp32.onnx"
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter: chosen, as optimum does
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, example, str(fp32), input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          opset_version=17, dynamo=False, dynamic_axes=axes)  # fmt: skip
    quantize_dynamic(str(fp32), str(tmp / ENGINE_FILES["onnx"]), weight_type=QuantType.QInt8, per_channel=True)
    fp32.unlink()
    for name in TOKENIZER_FILES:
        if (teacher_dir / name).is_file():
            shutil.copy2(teacher_dir / name, tmp / name)
    return {"tool": "onnxruntime", "steps": "torch.onnx.export (TorchScript exporter) + "
            "onnxruntime.quantization.quantize_dynamic(QInt8, per_channel)"}  # fmt: skip


ONESTEP_BUILDERS = {"optimum": _onestep_optimum, "onnxruntime": _onestep_onnxruntime}


def build_onestep_baseline(teacher_dir: str | Path, out_dir: str | Path, method: str = "optimum") -> dict[str, Any]:
    """Build the one-step int8 baseline of ``teacher_dir`` into the engine directory ``out_dir``; return its manifest.

    ``method="optimum"`` falls back to ``"onnxruntime"`` if optimum fails, and the manifest
    says which tool built it (and why the first failed). An existing ``out_dir`` built by the
    same method from the same teacher weights (sha256) is verified and kept.
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    teacher_sha = sha256_file(teacher_dir / "model.safetensors")
    if (out_dir / MANIFEST).is_file():
        try:
            old = verify_engine(out_dir)
            if old.get("teacher_sha256") == teacher_sha and old.get("requested_method") == method:
                return old | {"reused": True}
        except CheckpointError:
            pass
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        try:
            info = ONESTEP_BUILDERS[method](teacher_dir, tmp)
        except Exception as e:  # noqa: BLE001 - the fallback is the point; the error is recorded
            if method != "optimum":
                raise
            for p in tmp.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            info = _onestep_onnxruntime(teacher_dir, tmp) | {"optimum_error": f"{type(e).__name__}: {str(e)[:300]}"}
        info |= {"requested_method": method, "teacher_sha256": teacher_sha, "role": "baseline",
                 "build_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        manifest = write_manifest(
            tmp, format="onnx", precision="int8", variant=ONESTEP, source_model=str(teacher_dir),
            labels=_teacher_labels(teacher_dir), runtime=runtime_versions("optimum", "optimum-onnx", "onnxruntime", "torch"),
            extra=info,
        )  # fmt: skip
        verify_engine(tmp)
    return manifest


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
    got = (variant.manifest or {}).get("labels") if variant.kind == "engine" else _teacher_labels(variant.path)
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
    numbers. ``onestep_dir`` (None when ``cfg.onestep == "none"``) receives the one-step baseline.
    """
    from slimformer.data import load_labels, load_split  # noqa: PLC0415
    from slimformer.modeling import check_model_dir  # noqa: PLC0415

    t_start = time.perf_counter()
    machine = machine_fingerprint(cfg.num_threads)
    teacher_dir, data_dir = Path(teacher_dir), Path(data_dir)
    check_model_dir(teacher_dir)
    labels = load_labels(data_dir)
    test = load_split(data_dir / "test.jsonl")
    engines = discover(engines_root)  # before the build: a wrong path fails at once
    variants = [Variant(TEACHER, "pytorch", teacher_dir, "baseline")]
    onestep_info: dict[str, Any] = {}
    if cfg.onestep != "none":
        if onestep_dir is None:
            raise SlimformerError("benchmark.onestep is set but no output directory was given for the one-step baseline")
        log(f"benchmark: one-step baseline ({cfg.onestep}) -> {onestep_dir}")
        m = build_onestep_baseline(teacher_dir, onestep_dir, cfg.onestep)
        onestep_info = {"reused": bool(m.get("reused")), "build_seconds": m.get("build_seconds"), "tool": m.get("tool")}
        variants.append(Variant(ONESTEP, "engine", Path(onestep_dir), "baseline", read_manifest(onestep_dir)))
    variants += engines
    results: dict[str, dict[str, Any]] = {v.name: _describe(v) for v in variants}

    machine["pinning"] = pin = pin_plan(cfg.num_threads, cfg.pin_threads)
    workers = tuple(pin.get("ort_worker_cores", ()))
    runners, inputs = _prepare(variants, results, labels, test, cfg, workers, log)
    for name, runner in runners.items():
        warm_up(runner, inputs[name], cfg.warmup)
    order = schedule(list(runners), cfg.rounds, cfg.seed)
    sizes = {s: len(b) for s, b in inputs[TEACHER].items()}  # the same inputs for every variant
    slices = {s: round_slices(n, cfg.repeats, cfg.rounds) for s, n in sizes.items()}
    t0, cpu0 = time.perf_counter(), cpu_counters()
    with pinned_to(pin.get("timing_core")):  # after the warm-up: PyTorch's threads, started by now, stay unpinned
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
    worker_cores: tuple[int, ...],
    log,
) -> tuple[dict[str, Runner], dict[str, dict[str, Batches]]]:
    """Open every runnable variant; fill in accuracy, size and parameters; tokenize its timed batches."""
    from slimformer.modeling import load_tokenizer  # noqa: PLC0415

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
            runner = open_runner(v, cfg.num_threads, worker_cores)  # engines: every sha256 verified first
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
