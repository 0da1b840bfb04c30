"""The benchmark's two baselines: the fine-tuned teacher in PyTorch (by name) and the one-step int8 engine.

``onestep_int8_onnx`` is the one step a user would reach for: the teacher exported by optimum
and dynamically int8-quantized by ONNX Runtime, no distillation or pruning. Its own DVC stage
(``onestep_baseline``) builds it with :func:`build_onestep_baseline`; the benchmark measures it
beside the pipeline's engines.

Imports no torch at the top (the benchmark's peak-RSS child imports the names).
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from slimformer.contract import TOKENIZER_FILES
from slimformer.engines import ENGINE_FILES, runtime_versions, source_labels, verify_engine, write_manifest
from slimformer.errors import ConfigError
from slimformer.io import atomic_dir, sha256_file

TEACHER = "teacher_pytorch"  # the fine-tuned teacher in PyTorch eager fp32: every ratio's denominator
ONESTEP = "onestep_int8_onnx"


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

    from slimformer.modeling import load_classifier  # noqa: PLC0415
    from slimformer.onnx_export import LogitsOnly, onnx_torchscript  # noqa: PLC0415

    model = LogitsOnly(load_classifier(teacher_dir)).eval()
    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    fp32 = tmp / "fp32.onnx"
    onnx_torchscript(model, example, fp32, opset=17)  # the TorchScript-based exporter: chosen, as optimum does
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
    says which tool built it (and why the first failed). ``method="none"`` writes a skipped
    engine (a manifest with the reason, no engine file), so the stage's output exists either way.
    Rebuilt on every call: DVC, not this function, decides when the teacher changed.
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    if method not in (*ONESTEP_BUILDERS, "none"):
        raise ConfigError(f"one-step baseline method {method!r} unknown; known: {', '.join((*ONESTEP_BUILDERS, 'none'))}")
    teacher_sha = sha256_file(teacher_dir / "model.safetensors")
    fields = {"format": "onnx", "precision": "int8", "variant": ONESTEP, "source_model": str(teacher_dir),
              "labels": source_labels(teacher_dir)}  # fmt: skip
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        if method == "none":
            return write_manifest(tmp, **fields, status="skipped", reason="the one-step baseline is off (onestep: none)",
                                  extra={"requested_method": method, "role": "baseline"})  # fmt: skip
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
        runtime = runtime_versions("optimum", "optimum-onnx", "onnxruntime", "torch")
        manifest = write_manifest(tmp, **fields, runtime=runtime, extra=info)
        verify_engine(tmp)
    return manifest
