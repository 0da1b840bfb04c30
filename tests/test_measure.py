"""measure: the single-file size and the safetensors header reader agree with their references."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

from slimformer import measure


def test_file_sizes_equal_a_zip_of_the_file_alone_at_zlib_default(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(np.random.default_rng(0).bytes(5_000) + b"\0" * 50_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:  # the reference: zlib's default level
        z.write(p, p.name)
    got = measure.file_sizes(p)
    assert got == {"dense_bytes": 55_000, "zip_bytes": len(buf.getvalue())}
    assert 5_000 < got["zip_bytes"] < 6_000


def test_safetensors_header_gives_shapes_count_and_payload_end(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.float16)}, str(p), metadata={"format": "pt"})
    assert measure.safetensors_shapes(p) == {"a": [3, 4], "b": [5]}
    assert measure.safetensors_parameters(p) == 17
    assert measure.safetensors_payload_end(p) == p.stat().st_size
    n, header = measure.safetensors_header(p)
    assert header["__metadata__"] == {"format": "pt"} and n + 8 < p.stat().st_size


def test_time_calls_passes_each_input_tuple_and_times_in_milliseconds():
    seen = []
    ms = measure.time_calls(lambda *args: seen.append(args), [(1, 2), (3,)])
    assert seen == [(1, 2), (3,)] and len(ms) == 2 and all(0 <= t < 1000 for t in ms)
