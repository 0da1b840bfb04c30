"""TensorRT: profile shapes, the availability check, the build recipe (against a stand-in module), a real build where possible."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import sum_model, sum_reference

from slimformer.engines import tensorrt as trt_engine
from slimformer.config import ExportConfig, TensorRTConfig
from slimformer.errors import ConfigError


def test_profile_shapes_from_params():
    cfg = TensorRTConfig(min_shape=(1, 4), opt_shape=(8, 32), max_shape=(32, 64))
    shapes = trt_engine.profile_shapes(cfg)
    assert shapes == {"input_ids": ((1, 4), (8, 32), (32, 64)), "attention_mask": ((1, 4), (8, 32), (32, 64))}
    assert trt_engine.profile_shapes(cfg, max_positions=64)["input_ids"][2] == (32, 64)
    with pytest.raises(trt_engine.TensorRTError, match="max_position_embeddings=48"):
        trt_engine.profile_shapes(cfg, max_positions=48)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"min_shape": [4, 8], "opt_shape": [2, 8]}, r"export\.tensorrt\.opt_shape: .*min_shape <= opt_shape <= max_shape"),
        ({"max_shape": [32]}, r"export\.tensorrt\.max_shape: .*\[batch, sequence\]"),
        ({"min_shape": [0, 8]}, r"export\.tensorrt\.min_shape"),
        ({"max_shape": [32, 1024], "opt_shape": [8, 64]}, r"sequence <= 512"),
        ({"workspace": 10}, r"unknown key \(did you mean export\.tensorrt\.workspace_mb\?\)"),
    ],
)
def test_bad_profile_params(raw, match):
    with pytest.raises(ConfigError, match=match):
        ExportConfig.from_dict({"tensorrt": raw}, prefix="export")


def test_availability_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    ok, reason = trt_engine.availability()
    assert not ok and "tensorrt Python package is not installed" in reason


def test_availability_without_cuda(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ok, reason = trt_engine.availability()
    assert not ok
    assert ("no CUDA support" in reason) if torch.version.cuda is None else ("no CUDA device 0" in reason)


class FakeTRT:
    """Just enough of the TensorRT Python API to record what build_engine asks for."""

    def __init__(self, version: str) -> None:
        self.__version__ = version
        self.calls: list[tuple] = []
        rec = self.calls

        class Flag:
            EXPLICIT_BATCH = 0

        if not version.startswith("8"):  # strongly typed networks arrived after TensorRT 8.6
            Flag.STRONGLY_TYPED = 5

        class BuilderFlag:
            FP16, INT8 = "FP16", "INT8"

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Input:
            def __init__(self, name):
                self.name = name

        class Network:
            num_inputs = 2

            def get_input(self, i):
                return Input(("input_ids", "attention_mask")[i])

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.append(("parse", Path(path).name))
                return True

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                rec.append(("shape", name, lo, opt, hi))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.append(("pool", pool, size))

            def set_flag(self, flag):
                rec.append(("flag", flag))

            def add_optimization_profile(self, profile):
                rec.append(("profile",))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        self.NetworkDefinitionCreationFlag, self.BuilderFlag, self.MemoryPoolType = Flag, BuilderFlag, MemoryPoolType
        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser


@pytest.mark.parametrize("version, precision", [("10.3.0", "fp16"), ("10.3.0", "int8"), ("8.6.1", "int8")])
def test_build_recipe(tmp_path, monkeypatch, version, precision):
    fake = FakeTRT(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cfg = TensorRTConfig(min_shape=(1, 2), opt_shape=(4, 16), max_shape=(8, 32), workspace_mb=64)
    info = trt_engine.build_engine(tmp_path / "m.onnx", tmp_path / "model.engine", precision, cfg)
    assert (tmp_path / "model.engine").read_bytes() == b"PLAN"
    calls = fake.calls
    assert ("pool", "WORKSPACE", 64 << 20) in calls
    for name in ("input_ids", "attention_mask"):
        assert ("shape", name, (1, 2), (4, 16), (8, 32)) in calls
    flags = next(c[1] for c in calls if c[0] == "network")
    if precision == "fp16":
        assert ("flag", "FP16") in calls and flags == 0
    elif version.startswith("10"):  # explicit quantization, strongly typed: no precision flags
        assert flags == 1 << 5 and not any(c[0] == "flag" for c in calls) and info["strongly_typed"]
    else:  # TensorRT 8: explicit batch flag, INT8 flag
        assert flags & 1 and ("flag", "INT8") in calls
    assert info["profile"]["input_ids"] == {"min": [1, 2], "opt": [4, 16], "max": [8, 32]}


@pytest.mark.tensorrt
def test_real_build_and_run(tmp_path):
    ok, reason = trt_engine.availability()
    if not ok:
        pytest.skip(reason)
    onnx_path = sum_model(tmp_path / "model.onnx")
    cfg = TensorRTConfig(min_shape=(1, 1), opt_shape=(4, 16), max_shape=(8, 32))
    trt_engine.build_engine(onnx_path, tmp_path / "model.engine", "fp16", cfg)
    runner = trt_engine.TensorRTRunner(tmp_path / "model.engine")
    ids = np.arange(24, dtype=np.int64).reshape(3, 8) % 7
    mask = np.ones_like(ids)
    np.testing.assert_allclose(runner(ids, mask), sum_reference(ids, mask), rtol=1e-2)
