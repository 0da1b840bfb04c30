"""The machine a latency figure was taken on: fingerprint, CPU counters from ``/proc``, thread pinning.

Standard library only (the benchmark's peak-RSS child imports nothing heavy through here).
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from slimformer.engines.manifest import runtime_versions

CPU_FLAGS = ("sse4_2", "fma", "f16c", "avx", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip
VERSIONS = ("torch", "onnxruntime", "onnx", "transformers", "optimum", "optimum-onnx", "numpy")


@dataclass(frozen=True)
class PinPlan:
    """Which core times the calls and which cores ONNX Runtime's workers use, or why nothing is pinned.

    Made once by :func:`pin_plan` and handed to the benchmark's timing and to the ONNX runners it opens.
    """

    pinned: bool
    timing_core: int | None = None
    ort_worker_cores: tuple[int, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As ``benchmark.json`` records it (``machine.pinning``)."""
        if not self.pinned:
            return {"pinned": False, "reason": self.reason}
        return {"pinned": True, "timing_core": self.timing_core, "ort_worker_cores": list(self.ort_worker_cores)}


def pin_plan(num_threads: int, enabled: bool = True) -> PinPlan:
    """Which core times the calls and which cores ONNX Runtime's workers use, or why nothing is pinned.

    The timing thread is pinned to the first usable core and each of the ``num_threads - 1``
    ONNX Runtime worker threads to one of the next cores, so the scheduler cannot stack a call's
    threads on one core. Left to the scheduler on this 2-core machine, the batch-1 speedups of
    the same engines varied by up to 15% from one process to the next (six processes); pinned,
    by 4 to 7% (five). PyTorch's own threads are not pinned.
    """
    if not enabled:
        return PinPlan(False, reason="benchmark.pin_threads is false")
    if not hasattr(os, "sched_getaffinity"):
        return PinPlan(False, reason="thread affinity is not available on this platform")
    cores = sorted(os.sched_getaffinity(0))
    if num_threads < 2 or len(cores) < num_threads:
        return PinPlan(False, reason=f"{num_threads} thread(s) on {len(cores)} usable core(s): nothing to place")
    return PinPlan(True, timing_core=cores[0], ort_worker_cores=tuple(cores[1:num_threads]))


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
        "versions": {name: runtime_versions(name).get(name) for name in VERSIONS},
        "thread_env": env,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
