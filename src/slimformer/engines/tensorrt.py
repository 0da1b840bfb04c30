"""TensorRT engines: build one from ONNX (FP16, or INT8 from a QDQ model) and run it.

TensorRT needs NVIDIA's wheels and a CUDA device, which many machines (CI, these CPU
boxes) do not have. Everything that decides *what* to build (the optimization profile,
the availability check) is pure Python and tested everywhere; only :func:`build_engine`
and :class:`TensorRTRunner` import ``tensorrt`` (and they are only called once
:func:`availability` said yes).

INT8 uses *explicit* quantization: the scales come from the Q/DQ nodes of an ONNX model
quantized by ``slimformer.quantize`` (symmetric int8, as TensorRT requires), so no
TensorRT calibrator is involved (calibrators are deprecated since TensorRT 10.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from slimformer.config import TensorRTConfig
from slimformer.contract import INPUT_NAMES, OUTPUT_NAME
from slimformer.engines.manifest import ENGINE_FILES, runtime_versions, source_labels, verify_engine, write_manifest
from slimformer.errors import ConfigError, SlimformerError
from slimformer.io import atomic_dir

ENGINE_FILE = ENGINE_FILES["tensorrt"]
PRECISION_OF_EXPORTER = {"tensorrt_fp16": "fp16", "tensorrt_int8": "int8"}

Shape = tuple[int, int]  # (batch, sequence)


class TensorRTError(SlimformerError):
    """TensorRT could not parse the ONNX model, build the engine, or run it."""


def profile_shapes(
    cfg: TensorRTConfig, input_names: tuple[str, ...] = INPUT_NAMES, max_positions: int | None = None
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The (min, opt, max) ``(batch, sequence)`` shapes of the optimization profile, per input.

    Both inputs share one profile: ``input_ids`` and ``attention_mask`` always have the same
    shape. ``max_positions`` (the model's ``max_position_embeddings``) caps the sequence.
    """
    lo, opt, hi = (tuple(int(d) for d in s) for s in (cfg.min_shape, cfg.opt_shape, cfg.max_shape))
    for name, shape in (("min_shape", lo), ("opt_shape", opt), ("max_shape", hi)):
        if len(shape) != 2 or min(shape) < 1:
            raise TensorRTError(f"export.tensorrt.{name}: got {list(shape)}, expected [batch, sequence] >= 1")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise TensorRTError(f"export.tensorrt: need min <= opt <= max per dimension, got {list(lo)}, {list(opt)}, {list(hi)}")
    if max_positions is not None and hi[1] > max_positions:
        raise TensorRTError(
            f"export.tensorrt.max_shape: sequence {hi[1]} exceeds the model's max_position_embeddings={max_positions}"
        )
    return {name: (lo, opt, hi) for name in input_names}  # type: ignore[misc]


def availability(device: int = 0) -> tuple[bool, str]:
    """``(True, what)`` when TensorRT and a CUDA device are usable, else ``(False, the exact reason)``."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        return False, f"the tensorrt Python package is not installed ({e}); TensorRT needs NVIDIA's wheels and a CUDA GPU"
    import torch  # noqa: PLC0415

    if torch.version.cuda is None:
        return False, f"tensorrt {trt.__version__} is installed but torch {torch.__version__} has no CUDA support"
    if not torch.cuda.is_available() or torch.cuda.device_count() <= device:
        return False, f"no CUDA device {device} (torch.cuda.device_count() = {torch.cuda.device_count()})"
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name(device)}"


def source_info(source_dir: Path, precision: str, cfg: TensorRTConfig) -> dict[str, Any]:
    """Check the ONNX engine a TensorRT engine builds from, and the profile; return the new manifest's fields.

    Runs where TensorRT is absent too: a wrong source or profile is an error on every machine.
    """
    source = verify_engine(source_dir)
    if source["format"] != "onnx" or source["status"] != "ok":
        raise ConfigError(f"{source_dir}: TensorRT builds from an ONNX engine directory, got {source['format']} ({source['status']})")
    if precision == "int8" and source.get("quant_format") != "qdq_symmetric":
        raise ConfigError(f"{source_dir}: TensorRT int8 needs the QDQ int8 ONNX engine with symmetric scales "
                          f"(explicit quantization), got quant_format={source.get('quant_format')!r}")  # fmt: skip
    if precision == "fp16" and source["precision"] != "fp32":
        raise ConfigError(f"{source_dir}: TensorRT fp16 builds from the fp32 ONNX engine, got {source['precision']}")
    profile_shapes(cfg)
    return {"format": "tensorrt", "precision": precision, "opset": source.get("opset"), "device": cfg.device}


def write_skipped(
    exporter: str, source_dir: str | Path, cfg: TensorRTConfig, out_dir: str | Path, variant: str | None = None
) -> dict[str, Any] | None:  # fmt: skip
    """Where TensorRT cannot build, write ``out_dir`` as a skipped engine (a manifest with the reason,
    no engine file) and return its manifest; return None where it can. The source engine and the
    profile are checked either way. Imports neither torch nor the exporters, so the ``tensorrt@``
    stages take a second where TensorRT is absent.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    info = source_info(source_dir, PRECISION_OF_EXPORTER[exporter], cfg)
    ok, reason = availability(cfg.device)
    if ok:
        return None
    with atomic_dir(out_dir) as tmp:
        return write_manifest(tmp, format=info["format"], precision=info["precision"], variant=variant or out_dir.name,
                              source_model=str(source_dir), labels=source_labels(source_dir), opset=info["opset"],
                              status="skipped", reason=reason, runtime={},
                              extra={"device": info["device"], "build_seconds": 0.0, "exporter_name": exporter})  # fmt: skip


def tensorrt_version() -> str | None:
    return runtime_versions("tensorrt").get("tensorrt")


def _network_flags(trt: Any, precision: str) -> tuple[int, bool]:
    """Network creation flags, and whether the network is strongly typed."""
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if int(trt.__version__.split(".")[0]) < 10:  # before TensorRT 10, implicit batch was the default
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    strongly_typed = precision == "int8" and hasattr(creation, "STRONGLY_TYPED")
    if strongly_typed:
        # Explicit (Q/DQ) quantization is meant to run strongly typed: precision comes from the graph,
        # and precision builder flags must then not be set.
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags, strongly_typed


def build_engine(
    onnx_path: Path, engine_path: Path, precision: Literal["fp16", "int8"], cfg: TensorRTConfig,
    max_positions: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Parse ``onnx_path``, build a serialized engine at ``engine_path``; return build facts for the manifest.

    ``precision="fp16"`` sets the FP16 builder flag on an fp32 ONNX model; ``"int8"`` expects a
    QDQ ONNX model (explicit quantization). The optimization profile covers ``cfg``'s
    min/opt/max ``(batch, sequence)`` shapes for both inputs.
    """
    import tensorrt as trt  # noqa: PLC0415

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strongly_typed = _network_flags(trt, precision)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
    names = tuple(network.get_input(i).name for i in range(network.num_inputs))
    if set(names) != set(INPUT_NAMES):
        raise TensorRTError(f"{onnx_path}: inputs are {list(names)}, expected {list(INPUT_NAMES)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif not strongly_typed:  # TensorRT 8.x: explicit quantization still needs the INT8 flag
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(cfg, names, max_positions)
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"{onnx_path}: TensorRT failed to build a {precision} engine (see the log above)")
    engine_path.write_bytes(bytes(plan))
    return {
        "tensorrt_version": trt.__version__,
        "strongly_typed": strongly_typed,
        "workspace_mb": cfg.workspace_mb,
        "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in shapes.items()},
    }


class TensorRTRunner:
    """Run a serialized engine on one CUDA device, through torch CUDA tensors (no pycuda needed).

    ``runner(input_ids, attention_mask)``: int64 ``(batch, seq)`` numpy arrays inside the
    engine's profile -> float32 logits ``(batch, classes)``.
    """

    runtime = "tensorrt"

    def __init__(self, engine_path: Path, device: int = 0) -> None:
        import tensorrt as trt  # noqa: PLC0415
        import torch  # noqa: PLC0415

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise TensorRTError(f"{engine_path}: not a TensorRT engine for this TensorRT version or GPU")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(self.device)
        self._dtypes = {name: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(name)) for name in (*INPUT_NAMES, OUTPUT_NAME)}

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        keep = []  # inputs must stay alive until the stream has finished with them
        for name, array in zip(INPUT_NAMES, (input_ids, attention_mask), strict=True):
            t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype=self._dtypes[name])
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=self._dtypes[OUTPUT_NAME], device=self.device)
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise TensorRTError("TensorRT execution failed (inputs outside the engine's optimization profile?)")
        self.stream.synchronize()
        return out.float().cpu().numpy()


def _torch_dtype(trt: Any, torch: Any, dtype: Any) -> Any:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "int64"):  # TensorRT >= 10 keeps int64 inputs; 8.x casts them to int32
        table[trt.int64] = torch.int64
    return table[dtype]
