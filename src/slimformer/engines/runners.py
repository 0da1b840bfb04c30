"""Runners: one engine file opened in its runtime, called as ``runner(input_ids, attention_mask) -> logits``.

:func:`load_engine` verifies the directory (:func:`slimformer.engines.manifest.verify_engine`)
and opens its runner from :data:`RUNNERS`, keyed by the manifest's ``format``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slimformer.contract import INPUT_NAMES, OUTPUT_NAME
from slimformer.engines.manifest import ENGINE_FILES, verify_engine
from slimformer.errors import CheckpointError, SlimformerError


class ParityError(SlimformerError):
    """An engine's outputs differ from its reference beyond the allowed tolerance."""


class EngineSkipped(SlimformerError):
    """The engine directory holds a manifest with status "skipped" (e.g. no TensorRT here)."""


class Runner(Protocol):
    """``runner(input_ids, attention_mask) -> logits``: int64 (batch, seq) arrays -> float32 (batch, classes)."""

    runtime: str

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


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
        feeds = dict(zip(INPUT_NAMES, (input_ids, attention_mask), strict=True))
        feeds = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feeds.items() if k in self.input_names}
        return self.session.run([OUTPUT_NAME], feeds)[0].astype(np.float32, copy=False)


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


class TokenTypeZeros:
    """An ONNX engine whose graph also takes ``token_type_ids`` (optimum's export): BERT's default, zeros."""

    def __init__(self, runner: OrtRunner) -> None:
        self.runner = runner
        self.runtime = runner.runtime

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = dict(zip(INPUT_NAMES, (input_ids, attention_mask), strict=True)) | {"token_type_ids": np.zeros_like(input_ids)}
        return self.runner.session.run([OUTPUT_NAME], feeds)[0].astype(np.float32, copy=False)


def _onnx_runner(engine_dir: Path, manifest: dict, num_threads: int) -> Runner:
    return OrtRunner(engine_dir / ENGINE_FILES["onnx"], num_threads)


def _torchscript_runner(engine_dir: Path, manifest: dict, num_threads: int) -> Runner:
    return TorchScriptRunner(engine_dir / ENGINE_FILES["torchscript"], num_threads)


def _tensorrt_runner(engine_dir: Path, manifest: dict, num_threads: int) -> Runner:
    from slimformer.engines import tensorrt  # noqa: PLC0415

    ok, reason = tensorrt.availability(int(manifest.get("device", 0)))
    if not ok:
        raise EngineSkipped(f"{engine_dir}: cannot run a TensorRT engine here: {reason}")
    return tensorrt.TensorRTRunner(engine_dir / ENGINE_FILES["tensorrt"], int(manifest.get("device", 0)))


# Runner factories by manifest "format": fn(engine_dir, manifest, num_threads) -> Runner
RUNNERS: dict[str, Callable[[Path, dict, int], Runner]] = {
    "onnx": _onnx_runner,
    "torchscript": _torchscript_runner,
    "tensorrt": _tensorrt_runner,
}


def load_engine(
    engine_dir: str | Path, num_threads: int = 2, *, worker_cores: tuple[int, ...] = (), trust_torchscript: bool = False
) -> Runner:  # fmt: skip
    """Verify ``engine_dir`` (:func:`verify_engine`) and return its Runner.

    A skipped engine raises EngineSkipped carrying the manifest's reason. A TorchScript
    engine loads only with ``trust_torchscript=True``: a TorchScript archive is code
    (``torch.jit.load`` runs its ``__setstate__`` methods), and the sha256 values in the
    manifest prove the directory intact, not who wrote it. Pass True only for an engine you
    built yourself or whose source you trust. ONNX and TensorRT engines need no trust flag.

    ``worker_cores`` pins an ONNX engine's worker threads (:class:`OrtRunner`); the benchmark
    alone asks for it, so it stays out of the :data:`RUNNERS` signature.
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
    if worker_cores and manifest["format"] == "onnx":
        return OrtRunner(engine_dir / ENGINE_FILES["onnx"], num_threads, worker_cores)
    return RUNNERS[manifest["format"]](engine_dir, manifest, num_threads)
