"""Engine directories: the contract between export/quantization and the benchmark.

An engine directory is self-contained::

    artifacts/engines/<variant>/
        model.onnx | model.ts | model.engine   the engine file (one of)
        tokenizer files                        copied from the source model (its vocab may be trimmed)
        manifest.json                          what the directory holds, and proof it is intact

``manifest.json`` fields: ``format`` (onnx | torchscript | tensorrt), ``precision``
(fp32 | fp16 | int8), ``variant``, ``source_model``, ``files`` ({relative name: sha256} of
every other file; verification requires the directory to hold exactly these), ``inputs`` / ``outputs`` ([{name, shape, dtype}], symbolic shapes such
as ``["batch", "sequence"]``), ``opset``, ``runtime_versions``, ``parity`` (the gate the
engine passed), ``labels`` (class names by id), ``status`` (ok | skipped) and, when
skipped, ``reason``. A skipped engine has a manifest and no engine file.

Using an engine (what the benchmark does)::

    runner = load_engine(engine_dir, num_threads=2)      # verifies the directory first (see verify_engine)
    tokenizer = slimformer.modeling.load_tokenizer(engine_dir)
    logits = runner(input_ids, attention_mask)          # int64 (batch, seq) x2 -> float32 (batch, classes)
    runner.runtime                                      # "onnxruntime-cpu", "torchscript", "tensorrt"

Inputs are ``input_ids`` and ``attention_mask`` only (BERT defaults ``token_type_ids`` to
zeros), exactly what training feeds the model.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path, PureWindowsPath
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


def regular_files(engine_dir: Path) -> list[str]:
    """Every regular file under ``engine_dir`` (manifest included), by relative POSIX path, sorted.

    Symbolic links (to files or directories) and special files are refused with a
    CheckpointError naming them: a link could make a verified name read bytes from outside
    the directory, and nothing this project writes is a link.
    """
    found = []
    for root, dirs, files in os.walk(engine_dir, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise CheckpointError(f"{path}: a symbolic link inside an engine directory; engines hold regular files only")
            if name in files and not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path}: not a regular file; engines hold regular files only")
            if name in files:
                found.append(path.relative_to(engine_dir).as_posix())
    return sorted(found)


def file_hashes(engine_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``engine_dir`` except the manifest, by relative POSIX path."""
    return {name: sha256_file(engine_dir / name) for name in regular_files(engine_dir) if name != MANIFEST}


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
    """The parsed ``manifest.json`` of ``engine_dir``; CheckpointError naming it if missing or malformed."""
    path = Path(engine_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no engine manifest; not an engine directory (rerun the export stage)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable engine manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: malformed engine manifest: a JSON object is expected, got {type(manifest).__name__}")
    missing = [k for k in ("format", "precision", "variant", "files", "status") if k not in manifest]
    if missing:
        raise CheckpointError(f"{path}: manifest lacks {', '.join(missing)}")
    problem = manifest_type_problem(manifest)
    if problem:
        raise CheckpointError(f"{path}: malformed engine manifest: {problem}")
    if manifest["format"] not in FORMATS:
        raise CheckpointError(f"{path}: unknown engine format {manifest['format']!r}; known: {', '.join(FORMATS)}")
    return manifest


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# The type each manifest field must have where present (a damaged or hostile manifest must not
# reach code that trusts it, e.g. int(manifest["device"]) or path joins of its keys).
MANIFEST_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: isinstance(v, str), "a string"),
    "precision": (lambda v: isinstance(v, str), "a string"),
    "variant": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: v in ("ok", "skipped"), "'ok' or 'skipped'"),
    "files": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, str) for k, d in v.items()),
              "an object of {relative file name: sha256 string}"),
    "labels": (_is_str_list, "a list of strings"),
    "inputs": (lambda v: isinstance(v, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in v),
               "a list of {name, shape, dtype} objects"),
    "device": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a CUDA device index (an integer >= 0)"),
    "max_length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
}


def manifest_type_problem(manifest: dict[str, Any]) -> str | None:
    """The first field of ``manifest`` whose type is wrong, said in words; None if all are right."""
    for key, (ok, expected) in MANIFEST_TYPES.items():
        if key in manifest and not ok(manifest[key]):
            return f"{key!r} must be {expected}, got {json.dumps(manifest[key])[:80]}"
    return None


def safe_member(engine_dir: Path, name: str) -> Path:
    """``engine_dir / name`` for a manifest key that stays inside ``engine_dir``; CheckpointError otherwise.

    Refused: absolute names, ``..`` or ``.`` parts, empty parts, backslashes, the manifest itself.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or PureWindowsPath(name).is_absolute()
            or any(p in ("", ".", "..") for p in parts) or name == MANIFEST):  # fmt: skip
        raise CheckpointError(f"{engine_dir / MANIFEST}: file name {name!r} is not a plain relative path inside the engine directory")
    return engine_dir.joinpath(*parts)


def source_labels(source_dir: Path) -> list[str]:
    """Class names by id: from an engine manifest, or from a model's config.json id2label."""
    if (source_dir / MANIFEST).is_file():
        return list(read_manifest(source_dir).get("labels", []))
    id2label = json.loads((source_dir / "config.json").read_text(encoding="utf-8")).get("id2label", {})
    return [id2label[k] for k in sorted(id2label, key=int)]


def verify_engine(engine_dir: str | Path) -> dict[str, Any]:
    """Check that ``engine_dir`` holds exactly what its manifest lists, byte for byte; return the manifest.

    Every regular file under the directory must be listed with a matching sha256 (the engine
    file of an "ok" engine among them); every listed name must be a plain relative path
    inside the directory; no symbolic link may appear anywhere. For ONNX engines the model
    is also run through ``onnx.checker``. Any failure raises CheckpointError naming the file.

    This proves the directory is intact and complete, not who made it: the hashes sit in the
    same directory. Trust in a TorchScript archive is asked for separately (:func:`load_engine`).
    """
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    listed = {name: safe_member(engine_dir, name) for name in manifest["files"]}
    on_disk = [n for n in regular_files(engine_dir) if n != MANIFEST]
    for name in on_disk:
        if name not in listed:
            raise CheckpointError(f"{engine_dir / name}: not listed in {MANIFEST} (an engine directory holds only the files it lists)")
    for name, path in listed.items():
        if name not in on_disk:
            raise CheckpointError(f"{path}: listed in {MANIFEST} but missing")
        if sha256_file(path) != manifest["files"][name]:
            raise CheckpointError(f"{path}: sha256 does not match {MANIFEST} (modified or corrupt file)")
    if manifest["status"] == "ok":
        engine_file = ENGINE_FILES[manifest["format"]]
        if engine_file not in listed:
            raise CheckpointError(f"{engine_dir / engine_file}: the engine file is not listed in {MANIFEST}")
        if manifest["format"] == "onnx":
            check_onnx(engine_dir / engine_file)
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

    ``torch.jit.load`` reads TorchScript's own archive format, which can carry code that runs
    on load; :func:`load_engine` verifies the directory first and opens one only when the
    caller says it trusts it (``trust_torchscript=True``).

    Call: ``module(input_ids, attention_mask)`` with two int64 (batch, seq) tensors, by
    position, returning float (batch, classes) logits; ``token_type_ids`` is not an input
    (the graph uses zeros, as BERT does when it is absent).
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


def load_engine(
    engine_dir: str | Path, num_threads: int = 2, worker_cores: tuple[int, ...] = (), trust_torchscript: bool = False
) -> Runner:  # fmt: skip
    """Verify ``engine_dir`` (:func:`verify_engine`) and return its Runner.

    A skipped engine raises EngineSkipped carrying the manifest's reason. A TorchScript
    engine loads only with ``trust_torchscript=True``: a TorchScript archive is code
    (``torch.jit.load`` runs its ``__setstate__`` methods), and the sha256 values in the
    manifest prove the directory intact, not who wrote it. Pass True only for an engine you
    built yourself or whose source you trust. ONNX and TensorRT engines need no trust flag.
    """
    engine_dir = Path(engine_dir)
    manifest = verify_engine(engine_dir)
    if manifest["status"] != "ok":
        raise EngineSkipped(f"{engine_dir}: engine was skipped: {manifest.get('reason', 'no reason recorded')}")
    if manifest["format"] == "torchscript" and not trust_torchscript:
        raise CheckpointError(
            f"{engine_dir / ENGINE_FILES['torchscript']}: a TorchScript engine can run code when loaded; load it only if you "
            "trust where it came from (trust_torchscript=True, or --trust-torchscript on the command line)"
        )
    return RUNNERS[manifest["format"]](engine_dir, manifest, num_threads, worker_cores)


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
