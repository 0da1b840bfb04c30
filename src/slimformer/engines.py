"""Engine directories: the contract between export/quantization and the benchmark.

An engine directory is self-contained::

    artifacts/engines/<variant>/
        model.onnx | model.ts | model.engine   the engine file (one of)
        tokenizer files                        copied from the source model (its vocab may be trimmed)
        manifest.json                          what the directory holds, and proof it is intact

``manifest.json`` fields: ``format`` (onnx | torchscript | tensorrt), ``precision``
(fp32 | fp16 | int8), ``variant``, ``source_model``, ``files`` ({relative name: sha256} of
every other file), ``inputs`` / ``outputs`` ([{name, shape, dtype}], symbolic shapes such
as ``["batch", "sequence"]``), ``opset``, ``runtime_versions``, ``parity`` (the gate the
engine passed), ``labels`` (class names by id), ``status`` (ok | skipped) and, when
skipped, ``reason``. A skipped engine has a manifest and no engine file.

Using an engine (what the benchmark does)::

    runner = load_engine(engine_dir, num_threads=2)      # verifies every sha256 first
    tokenizer = slimformer.modeling.load_tokenizer(engine_dir)
    logits = runner(input_ids, attention_mask)          # int64 (batch, seq) x2 -> float32 (batch, classes)
    runner.runtime                                      # "onnxruntime-cpu", "torchscript", "tensorrt"

Inputs are ``input_ids`` and ``attention_mask`` only (BERT defaults ``token_type_ids`` to
zeros), exactly what training feeds the model.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slimformer.errors import CheckpointError, SlimformerError
from slimformer.io import sha256_file, write_json

MANIFEST = "manifest.json"
FORMATS = ("onnx", "torchscript", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "tensorrt": "model.engine"}
INPUTS = [
    {"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
    {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"},
]
OUTPUTS = [{"name": "logits", "shape": ["batch", "classes"], "dtype": "float32"}]


class ParityError(SlimformerError):
    """An engine's outputs differ from its reference beyond the allowed tolerance."""


class EngineSkipped(SlimformerError):
    """The engine directory holds a manifest with status "skipped" (e.g. no TensorRT here)."""


class Runner(Protocol):
    """``runner(input_ids, attention_mask) -> logits``: int64 (batch, seq) arrays -> float32 (batch, classes)."""

    runtime: str

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


# ------------------------------------------------------------------ manifest


def runtime_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def file_hashes(engine_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``engine_dir`` except the manifest, by relative POSIX path."""
    return {
        p.relative_to(engine_dir).as_posix(): sha256_file(p)
        for p in sorted(engine_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(
    engine_dir: Path,
    *,
    format: str,
    precision: str,
    variant: str,
    source_model: str,
    labels: list[str],
    parity: dict[str, Any] | None = None,
    opset: int | None = None,
    runtime: dict[str, str] | None = None,
    status: str = "ok",
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file in ``engine_dir`` and write ``manifest.json``; return the manifest.

    Call it last, once the engine passed its parity gate: the hashes seal the directory.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} not in {FORMATS}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    if status not in ("ok", "skipped") or (status == "skipped") != bool(reason):
        raise ValueError("status is 'ok', or 'skipped' with a reason")
    manifest: dict[str, Any] = {
        "format": format,
        "precision": precision,
        "variant": variant,
        "source_model": str(source_model),
        "status": status,
        "files": file_hashes(Path(engine_dir)),
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "opset": opset,
        "runtime_versions": runtime or {},
        "parity": parity or {},
        "labels": list(labels),
    }
    if reason:
        manifest["reason"] = reason
    manifest |= extra or {}
    write_json(Path(engine_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(engine_dir: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of ``engine_dir``; CheckpointError if missing or malformed."""
    path = Path(engine_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no engine manifest; not an engine directory (rerun the export stage)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable engine manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: engine manifest must be a JSON object, got a JSON {type(manifest).__name__}")
    missing = [k for k in ("format", "precision", "variant", "files", "status") if k not in manifest]
    if missing:
        raise CheckpointError(f"{path}: manifest lacks {', '.join(missing)}")
    _check_manifest_types(path, manifest)
    if manifest["format"] not in FORMATS:
        raise CheckpointError(f"{path}: unknown engine format {manifest['format']!r}; known: {', '.join(FORMATS)}")
    return manifest


def _check_manifest_types(path: Path, manifest: dict[str, Any]) -> None:
    """Field types a hand-edited or foreign manifest may get wrong (else a raw TypeError later)."""
    for key in ("format", "precision", "variant", "status"):
        if not isinstance(manifest[key], str):
            raise CheckpointError(f"{path}: manifest {key!r} must be a string, got {manifest[key]!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"{path}: manifest 'files' must map file names to sha256 strings, got {files!r:.120}")
    device = manifest.get("device", 0)
    if manifest["format"] == "tensorrt" and (not isinstance(device, int) or isinstance(device, bool) or device < 0):
        raise CheckpointError(f"{path}: manifest 'device' must be a CUDA device index (an integer >= 0), got {device!r}")


def source_labels(source_dir: Path) -> list[str]:
    """Class names by id: from an engine manifest, or from a model's config.json id2label."""
    if (source_dir / MANIFEST).is_file():
        return list(read_manifest(source_dir).get("labels", []))
    id2label = json.loads((source_dir / "config.json").read_text(encoding="utf-8")).get("id2label", {})
    return [id2label[k] for k in sorted(id2label, key=int)]


def verify_engine(engine_dir: str | Path) -> dict[str, Any]:
    """Check that every file the manifest lists exists with its sha256; return the manifest.

    For ONNX engines the model is also run through ``onnx.checker``. Any mismatch raises
    CheckpointError naming the file.
    """
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    for name, digest in manifest["files"].items():
        path = engine_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {MANIFEST} but missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: sha256 does not match {MANIFEST} (modified or corrupt file)")
    if manifest["status"] == "ok" and manifest["format"] == "onnx":
        check_onnx(engine_dir / ENGINE_FILES["onnx"])
    return manifest


def check_onnx(path: Path) -> None:
    """Reject a file that is not a complete, valid ONNX model (CheckpointError naming it)."""
    import onnx  # noqa: PLC0415

    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model file missing")
    try:
        onnx.checker.check_model(str(path))  # by path: works for any size, checks external data too
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types for bad files
        raise CheckpointError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


# ------------------------------------------------------------------ runners


class OrtRunner:
    """An ONNX Runtime CPU session with a fixed thread count.

    Its worker threads stop spinning when a run ends (``session.force_spinning_stop``). By
    default they spin on for tens of milliseconds, holding the cores the next session needs:
    when the benchmark switched from one ONNX Runtime variant to another 10 ms later, batch-1
    calls of the second took 6 ms instead of 2 in spikes (p95 doubled). Within a run they
    spin as usual.
    """

    runtime = "onnxruntime-cpu"

    def __init__(self, path: Path, num_threads: int = 2, worker_cores: tuple[int, ...] = ()) -> None:
        """``worker_cores``: the core (0-based, as ``os.sched_getaffinity`` names them) each of the
        ``num_threads - 1`` worker threads is pinned to; empty = the scheduler places them."""
        import onnxruntime as ort  # noqa: PLC0415

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        if worker_cores:
            if len(worker_cores) != num_threads - 1:
                raise ValueError(f"worker_cores: {num_threads - 1} cores needed (one per worker thread), got {worker_cores}")
            # ORT numbers logical processors from 1; ";" separates threads (the caller's thread is not pinned by ORT)
            opts.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in worker_cores))
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {str(e)[:300]})") from None
        self.input_names = {i.name for i in self.session.get_inputs()}

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        feeds = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feeds.items() if k in self.input_names}
        return self.session.run(["logits"], feeds)[0].astype(np.float32, copy=False)


class TorchScriptRunner:
    """A TorchScript module (fp32, or int8 from torch dynamic quantization) on CPU.

    ``torch.jit.load`` reads TorchScript's own archive format; the sha256 check in
    :func:`load_engine` runs first, so only a file this project wrote is ever loaded.
    """

    runtime = "torchscript"

    def __init__(self, path: Path, num_threads: int = 2) -> None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(num_threads)  # process-wide: TorchScript has no per-module thread setting
        with warnings.catch_warnings():
            # torch 2.13 deprecates torch.jit; TorchScript is still the format this engine ships in.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            try:
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
            except (RuntimeError, ValueError, OSError) as e:  # not a TorchScript archive, or a damaged one
                raise CheckpointError(
                    f"{path}: not a loadable TorchScript file ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                ) from None
        self._torch = torch

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
                              torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)))  # fmt: skip
        return out.float().numpy()


class TorchRunner:
    """The PyTorch model itself, as a Runner: the reference every float engine is compared with."""

    runtime = "pytorch"

    def __init__(self, model: Any) -> None:
        import torch  # noqa: PLC0415

        self.model = model.eval()
        self._torch = torch

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
                             attention_mask=torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)))  # fmt: skip
        return out.logits.float().numpy()


def _onnx_runner(engine_dir: Path, manifest: dict, num_threads: int, worker_cores: tuple[int, ...] = ()) -> Runner:
    return OrtRunner(engine_dir / ENGINE_FILES["onnx"], num_threads, worker_cores)


def _torchscript_runner(engine_dir: Path, manifest: dict, num_threads: int, worker_cores: tuple[int, ...] = ()) -> Runner:
    return TorchScriptRunner(engine_dir / ENGINE_FILES["torchscript"], num_threads)


def _tensorrt_runner(engine_dir: Path, manifest: dict, num_threads: int, worker_cores: tuple[int, ...] = ()) -> Runner:
    from slimformer import tensorrt  # noqa: PLC0415

    ok, reason = tensorrt.availability(int(manifest.get("device", 0)))
    if not ok:
        raise EngineSkipped(f"{engine_dir}: cannot run a TensorRT engine here: {reason}")
    return tensorrt.TensorRTRunner(engine_dir / ENGINE_FILES["tensorrt"], int(manifest.get("device", 0)))


# Runner factories by manifest "format": fn(engine_dir, manifest, num_threads, worker_cores) -> Runner
# (worker_cores pins ONNX Runtime's worker threads; the other runtimes ignore it).
RUNNERS: dict[str, Callable[[Path, dict, int, tuple[int, ...]], Runner]] = {
    "onnx": _onnx_runner,
    "torchscript": _torchscript_runner,
    "tensorrt": _tensorrt_runner,
}


def load_engine(engine_dir: str | Path, num_threads: int = 2, worker_cores: tuple[int, ...] = ()) -> Runner:
    """Verify ``engine_dir`` (sha256 of every file, ONNX checker) and return its Runner.

    A skipped engine raises EngineSkipped carrying the manifest's reason.
    """
    engine_dir = Path(engine_dir)
    manifest = verify_engine(engine_dir)
    if manifest["status"] != "ok":
        raise EngineSkipped(f"{engine_dir}: engine was skipped: {manifest.get('reason', 'no reason recorded')}")
    return RUNNERS[manifest["format"]](engine_dir, manifest, num_threads, worker_cores)


def index_engines(root: str | Path) -> dict[str, Any]:
    """A summary of every engine directory under ``root``: variant -> format, precision, status, size."""
    root = Path(root)
    out: dict[str, Any] = {}
    for d in sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()):
        m = read_manifest(d)
        engine_file = ENGINE_FILES[m["format"]]
        entry = {k: m.get(k) for k in ("format", "precision", "status", "source_model")}
        entry["path"] = d.name
        if m["status"] == "ok":
            entry["engine_file"] = engine_file
            entry["engine_bytes"] = (d / engine_file).stat().st_size
        else:
            entry["reason"] = m.get("reason")
        out[m["variant"]] = entry
    return out


def engine_metrics(manifest: dict[str, Any], engine_dir: Path) -> dict[str, Any]:
    """The numbers a stage reports for one engine (size, build time, parity)."""
    out: dict[str, Any] = {"variant": manifest["variant"], "status": manifest["status"],
                           "format": manifest["format"], "precision": manifest["precision"]}  # fmt: skip
    if manifest["status"] != "ok":
        return out | {"reason": manifest.get("reason")}
    out["engine_bytes"] = (engine_dir / ENGINE_FILES[manifest["format"]]).stat().st_size
    out["build_seconds"] = manifest.get("build_seconds")
    parity = manifest.get("parity", {})
    out["parity_max_abs_diff"] = parity.get("max_abs_diff")
    if "agreement" in parity:
        out["agreement"] = parity["agreement"]
    return out
