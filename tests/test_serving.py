"""`slimformer verify / predict / serve / loadtest` on a tiny exported engine: real processes, a real port."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import write_data

from slimformer.config import ExportConfig
from slimformer.engines import load_engine
from slimformer.export import build_engine
from slimformer.serving import load_test

CFG = ExportConfig(batch_sizes=(1, 4), lengths=(8, 24), agreement_rows=0, max_length=24)
TEXTS = ["a moving, funny film", "tedious and far too long, with nothing to say at all, " * 5, "great fun", "awful"]
SLIMFORMER = str(Path(sys.executable).parent / "slimformer")
HEAVY = ("torch", "transformers", "dvc", "matplotlib")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_bert_dir) -> Path:
    data = write_data(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("engines") / "tiny_fp32_onnx"
    build_engine("onnx", tiny_bert_dir, CFG, data, out)
    return out


def expected(engine: Path, texts: list[str]) -> list[dict]:
    """Independent of slimformer.serving: the transformers tokenizer (truncated at the manifest's max_length) and the runner."""
    from transformers import AutoTokenizer

    tok, runner = AutoTokenizer.from_pretrained(engine), load_engine(engine, num_threads=1)
    out = []
    for t in texts:
        enc = tok([t], truncation=True, max_length=24, return_tensors="np")
        z = runner(enc["input_ids"], enc["attention_mask"])[0].astype(np.float64)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        out.append({"label": ["rotten", "fresh"][int(p.argmax())], "score": float(p.max())})
    return out


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SLIMFORMER, *args], capture_output=True, text=True, input=stdin, check=False, timeout=120)


def test_predict_prints_label_and_score_per_text(engine, tmp_path):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[2:]) + "\n\n")
    proc = run_cli("predict", str(engine), *TEXTS[:2], "--file", str(tmp_path / "texts.txt"))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    for row, want in zip(rows, expected(engine, TEXTS), strict=True):
        assert row["label"] == want["label"] and row["score"] == pytest.approx(want["score"], abs=1e-6)
    batched = run_cli("predict", str(engine), *TEXTS, "--batch-size", "4")
    for a, b in zip(rows, map(json.loads, batched.stdout.splitlines()), strict=True):  # padding changes nothing that matters
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_verify_and_predict_refuse_a_bad_directory(engine, tmp_path):
    assert run_cli("verify", str(engine)).returncode == 0
    proc = run_cli("predict", str(tmp_path / "nowhere"), "text")
    assert proc.returncode == 2 and "nowhere/manifest.json: no engine manifest" in proc.stderr
    bad = tmp_path / "bad"
    shutil.copytree(engine, bad)
    (bad / "notes.txt").write_text("added after sealing")
    for cmd in ("verify", "predict"):
        proc = run_cli(cmd, str(bad), *(["text"] if cmd == "predict" else []))
        assert proc.returncode == 2 and "bad/notes.txt: not listed in manifest.json" in proc.stderr, proc.stderr
    proc = run_cli("predict", str(engine))
    assert proc.returncode == 2 and "no texts" in proc.stderr


def test_predict_path_imports_no_torch_dvc_or_matplotlib(engine):
    code = ("import sys; from slimformer.cli import main\n"
            "try:\n    main(['predict', sys.argv[1], 'a moving, funny film'])\nexcept SystemExit:\n    pass\n"
            "import slimformer.serving, aiohttp.web\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(engine)], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]" and '"label"' in proc.stdout.splitlines()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(engine):
    port = free_port()
    proc = subprocess.Popen([SLIMFORMER, "serve", str(engine), "--port", str(port), "--max-batch", "4", "--threads", "1",
                             "--max-request-bytes", "4000", "--max-inputs", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=20)


async def _requests(url: str, cases: list[tuple[str, str, object]]) -> list[tuple[int, object]]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as s:
        for method, path, body in cases:
            kw = {"data": body} if isinstance(body, (str, bytes)) else ({"json": body} if body is not None else {})
            async with s.request(method, url + path, **kw) as r:
                out.append((r.status, await r.json(content_type=None)))
    return out


def test_serve_health_predict_and_bad_requests(server, engine):
    url, proc = server
    want = expected(engine, TEXTS)
    cases = [
        ("GET", "/health", None),
        ("POST", "/predict", {"inputs": TEXTS}),
        ("POST", "/predict", {"inputs": TEXTS[0]}),
        ("POST", "/predict", "{not json"),
        ("POST", "/predict", [1, 2]),
        ("POST", "/predict", {"text": "x"}),
        ("POST", "/predict", {"inputs": [1, "x"]}),
        ("POST", "/predict", {"inputs": []}),
        ("POST", "/predict", {"inputs": ["ok", ""]}),
        ("POST", "/predict", {"inputs": ["a"] * 9}),
        ("POST", "/predict", json.dumps({"inputs": ["x" * 5000]})),
        ("GET", "/predict", None),
        ("POST", "/predict", {"inputs": TEXTS[:1]}),  # still serving after all of the above
    ]
    results = asyncio.run(_requests(url, cases))
    statuses = [s for s, _ in results]
    assert statuses == [200, 200, 200, 400, 400, 400, 422, 422, 422, 413, 413, 405, 200]
    health = results[0][1]
    assert health["status"] == "ok" and health["labels"] == ["rotten", "fresh"] and health["max_length"] == 24
    for got, w in zip(results[1][1], want, strict=True):
        assert got["label"] == w["label"] and got["score"] == pytest.approx(w["score"], abs=1e-5)
    for single in (results[2][1], results[12][1]):  # {"inputs": "text"} and {"inputs": ["text"]}: a list of one
        assert len(single) == 1 and single[0]["label"] == want[0]["label"]
        assert single[0]["score"] == pytest.approx(want[0]["score"], abs=1e-5)
    for status, body in results[3:11]:
        assert isinstance(body, dict) and body["error"], (status, body)
    assert "at most 8" in results[9][1]["error"] and "4000" in results[10][1]["error"]
    assert proc.poll() is None
    maps = Path(f"/proc/{proc.pid}/maps")
    if maps.exists():  # the serving process never loaded torch's libraries
        assert "libtorch" not in maps.read_text()


def test_loadtest_against_the_server_matches_predict(server, engine, tmp_path):
    url, _ = server
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(TEXTS) + "\n")
    pred = run_cli("predict", str(engine), "--file", str(texts_file))
    (tmp_path / "expect.jsonl").write_text(pred.stdout)
    proc = run_cli("loadtest", url, "--file", str(texts_file), "--concurrency", "8", "--requests", "200",
                   "--expect", str(tmp_path / "expect.jsonl"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] == 200 and result["errors"] == 0 and result["mismatches"] == 0 and result["checked"] == 200
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["requests_per_s"] > 0
    # a wrong expectation is counted, not ignored
    wrong = {t: {"label": "nonsense", "score": 0.5} for t in TEXTS}
    assert load_test(url, TEXTS, concurrency=2, requests=8, expect=wrong)["mismatches"] == 8
