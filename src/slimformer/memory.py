"""Peak resident memory of one variant, measured in a fresh child process.

The child imports only its variant's runtime (this module and :mod:`slimformer.variants` import
no torch at the top), so an ONNX engine's figure does not include torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.engines import read_manifest
from slimformer.variants import Variant, open_runner

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


def peak_rss(variant: Variant, batches: list[tuple[np.ndarray, np.ndarray]], num_threads: int, timeout_s: float = 600) -> dict[str, Any]:
    """Peak RSS (MiB) of ``variant`` in a fresh child process (see :data:`RSS_METHOD`)."""
    fmt = variant.manifest["format"] if variant.manifest else "pytorch"
    spec = {"name": variant.name, "kind": variant.kind, "path": str(variant.path.resolve()), "format": fmt,
            "num_threads": num_threads}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rss.") as tmp:
        npz = Path(tmp) / "batches.npz"
        np.savez(npz, **{f"{k}{i}": a for i, (ids, mask) in enumerate(batches) for k, a in (("ids", ids), ("mask", mask))})
        code = "import sys; from slimformer.memory import rss_child; rss_child(sys.argv[1], sys.argv[2])"
        env = dict(os.environ, OMP_NUM_THREADS=str(num_threads))
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec), str(npz)], capture_output=True,
                              text=True, timeout=timeout_s, env=env)  # fmt: skip
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"peak_rss_mb": None, "rss_delta_mb": None, "rss_error": tail[0][:300]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": got["peak_rss_mb"], "rss_delta_mb": round(got["peak_rss_mb"] - got["base_rss_mb"], 1)}
