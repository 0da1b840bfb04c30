"""What the benchmark measures: a variant (an engine, or a model in PyTorch), how it is opened, what it ships.

Imports no torch at the top: the peak-RSS child opens a variant through here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.engines import ENGINE_FILES, MANIFEST, OrtRunner, Runner, TokenTypeZeros, load_engine, read_manifest
from slimformer.machine import PinPlan
from slimformer.measure import safetensors_parameters, zip_size


@dataclass(frozen=True)
class Variant:
    """One thing to measure: an engine directory, or a model directory run in PyTorch eager."""

    name: str
    kind: str  # "engine" (an engine directory with a manifest) or "pytorch" (a model directory)
    path: Path
    role: str = "candidate"  # "candidate" (a pipeline engine) or "baseline"
    manifest: dict | None = None


def open_runner(variant: Variant, num_threads: int, pin: PinPlan | None = None) -> Runner:
    """The Runner of ``variant``: ``load_engine`` (sha256-verified) or the PyTorch model itself.
    ``pin`` places ONNX Runtime's worker threads (see :func:`slimformer.machine.pin_plan`)."""
    if variant.kind == "pytorch":
        import torch  # noqa: PLC0415

        from slimformer.engines import TorchRunner  # noqa: PLC0415
        from slimformer.modeling import load_classifier  # noqa: PLC0415

        torch.set_num_threads(num_threads)
        return TorchRunner(load_classifier(variant.path))
    # The engines under artifacts/engines are the ones this pipeline built (TorchScript included).
    workers = pin.ort_worker_cores if pin is not None else ()
    runner = load_engine(variant.path, num_threads, worker_cores=workers, trust_torchscript=True)
    if isinstance(runner, OrtRunner) and "token_type_ids" in runner.input_names:
        return TokenTypeZeros(runner)
    return runner


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
