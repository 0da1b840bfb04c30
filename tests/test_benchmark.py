"""Benchmark: latency statistics, the interleaving schedule, and a tiny ONNX engine measured end to end."""

from __future__ import annotations

import gc
import json
import runpy
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from slimformer import baselines, machine, measure, memory, variants
from slimformer import benchmark as bm
from slimformer import config as config_module
from slimformer.config import BenchmarkConfig
from slimformer.engines import TokenTypeZeros, write_manifest
from slimformer.errors import ConfigError, SlimformerError

from conftest import write_jsonl

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]
LABELS = ["rotten", "fresh"]
ROOT = Path(__file__).resolve().parents[1]




# ------------------------------------------------------------------------------ statistics


def test_percentiles_match_numpy_on_known_samples():
    assert measure.percentiles([1.0, 2.0, 3.0, 4.0]) == {"p50_ms": 2.5, "p95_ms": pytest.approx(3.85), "p99_ms": pytest.approx(3.97)}
    x = np.random.default_rng(0).lognormal(0.0, 0.5, size=1001)
    got = measure.percentiles(x)
    for q in (50, 95, 99):
        assert got[f"p{q}_ms"] == pytest.approx(float(np.percentile(x, q)), rel=1e-12)
    assert got["p50_ms"] == pytest.approx(float(np.median(x)))
    with pytest.raises(ValueError):
        measure.percentiles([])


def test_latency_stats_pool_rounds_and_keep_round_medians():
    rounds = [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]
    s = measure.latency_stats(rounds, batch_size=4)
    assert s["p50_ms"] == pytest.approx(float(np.percentile([1, 2, 3, 10, 20, 30], 50)))
    assert s["round_p50_ms"] == [2.0, 20.0]
    assert s["calls"] == 6
    assert s["throughput_sps"] == pytest.approx(4 * 6 / (66 / 1000), rel=1e-3)  # sentences per second


def test_speedups_are_baseline_over_variant_and_per_round_median():
    base = {"p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 40.0, "round_p50_ms": [9.0, 10.0, 12.0]}
    var = {"p50_ms": 2.0, "p95_ms": 5.0, "p99_ms": 8.0, "round_p50_ms": [3.0, 2.0, 2.0]}
    s = measure.speedups(base, var)
    assert (s["p50"], s["p95"], s["p99"]) == (5.0, 4.0, 5.0)
    assert s["p50_round_median"] == 5.0  # median of 3, 5, 6
    assert (s["p50_round_min"], s["p50_round_max"]) == (3.0, 6.0)


def test_schedule_runs_every_variant_once_per_round_and_rotates():
    names = ["a", "b", "c", "d", "e"]
    order = measure.schedule(names, rounds=12, seed=3)
    assert len(order) == 12
    for r in order:
        assert sorted(r) == names  # every variant exactly once per round
    first_cycle = order[:5]
    for pos in range(5):  # across a cycle, every variant takes every position once
        assert sorted(r[pos] for r in first_cycle) == names
    assert all(order[i][0] != order[i + 1][0] for i in range(11))
    assert order == measure.schedule(names, rounds=12, seed=3)
    assert order != measure.schedule(names, rounds=12, seed=4)
    with pytest.raises(ValueError, match="duplicate"):
        measure.schedule(["a", "a"], 2, 0)


def test_round_slices_time_every_input_repeats_times_in_balanced_rounds():
    sl = measure.round_slices(n_items=7, repeats=3, rounds=4)
    assert len(sl) == 4 and sorted(len(r) for r in sl) == [5, 5, 5, 6]
    flat = [i for r in sl for i in r]
    assert sorted(flat) == sorted(list(range(7)) * 3)
    assert measure.round_slices(2, 1, 4) == [[], [0], [], [1]]  # fewer calls than rounds: some rounds are empty


def test_run_rounds_times_each_round_slice_in_schedule_order():
    calls: list[tuple[str, int]] = []

    def runner(tag):
        def call(ids, mask):
            calls.append((tag, int(ids[0, 0])))
            return np.zeros((ids.shape[0], 2), dtype=np.float32)

        return call

    def batch(i):
        return np.full((1, 3), i, np.int64), np.ones((1, 3), np.int64)

    inputs = {v: {"batch_1": [batch(i) for i in range(4)], "batch_4": [batch(10 + i) for i in range(2)]} for v in "xy"}
    order = measure.schedule(["x", "y"], rounds=2, seed=0)
    slices = {"batch_1": measure.round_slices(4, 1, 2), "batch_4": measure.round_slices(2, 1, 2)}
    times = measure.run_rounds({"x": runner("x"), "y": runner("y")}, inputs, order, slices, pause_s=0)
    assert [len(r) for r in times["x"]["batch_1"]] == [2, 2] and [len(r) for r in times["y"]["batch_4"]] == [1, 1]
    expected = [(v, i) for r in range(2) for v in order[r] for i in [*slices["batch_1"][r], *(10 + j for j in slices["batch_4"][r])]]
    assert calls == expected
    assert gc.get_freeze_count() == 0 and gc.isenabled()  # the collector is given back as it was


def test_speedups_skip_rounds_without_calls():
    base = {"p50_ms": 4.0, "p95_ms": 4.0, "p99_ms": 4.0, "round_p50_ms": [None, 4.0]}
    var = {"p50_ms": 2.0, "p95_ms": 2.0, "p99_ms": 2.0, "round_p50_ms": [None, 1.0]}
    assert measure.speedups(base, var)["p50_round_median"] == 4.0
    assert measure.latency_stats([[], [1.0, 3.0]], 1)["round_p50_ms"] == [None, 2.0]


def test_contention_counts_other_processes_and_steal_not_our_own_cpu():
    before = {"busy_s": 100.0, "steal_s": 5.0, "own_s": 10.0}
    after = {"busy_s": 118.0, "steal_s": 6.0, "own_s": 26.0}  # 18 s busy of which 16 s ours, over 10 s x 2 cores
    assert machine.contention(before, after, wall_s=10.0, cores=2) == {"other_processes_cpu_share": 0.1, "steal_share": 0.05}
    idle = {"busy_s": 116.0, "steal_s": 5.0, "own_s": 26.0}  # tick rounding can make ours exceed the machine's
    assert machine.contention(before, idle, 10.0, 2)["other_processes_cpu_share"] == 0.0
    assert machine.contention(None, after, 10.0, 2) == {"other_processes_cpu_share": None, "steal_share": None}


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="/proc/stat is Linux-only")
def test_cpu_counters_see_this_process_work():
    a = machine.cpu_counters()
    t0 = time.perf_counter()
    while time.process_time() - a["own_s"] < 0.3 and time.perf_counter() - t0 < 30:  # 0.3 s of our own CPU
        pass
    b = machine.cpu_counters()
    assert b["own_s"] - a["own_s"] >= 0.3 and b["busy_s"] - a["busy_s"] > 0.2  # the machine counted our work
    assert b["steal_s"] >= a["steal_s"]


def test_pin_plan_gives_the_timing_thread_and_each_worker_its_own_core(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    assert machine.pin_plan(2).to_dict() == {"pinned": True, "timing_core": 4, "ort_worker_cores": [5]}
    assert machine.pin_plan(3).ort_worker_cores == (5, 6)
    assert not machine.pin_plan(4).pinned and "3 usable core(s)" in machine.pin_plan(4).reason
    assert not machine.pin_plan(1).pinned
    assert machine.pin_plan(2, enabled=False).to_dict() == {"pinned": False, "reason": "benchmark.pin_threads is false"}


@pytest.mark.skipif(not hasattr(machine.os, "sched_setaffinity"), reason="thread affinity is Linux-only")
def test_pinned_to_restores_the_affinity_even_on_error():
    before = machine.os.sched_getaffinity(0)
    core = min(before)
    with pytest.raises(RuntimeError), machine.pinned_to(core):
        assert machine.os.sched_getaffinity(0) == {core}
        raise RuntimeError("inside")
    assert machine.os.sched_getaffinity(0) == before
    with machine.pinned_to(None):
        assert machine.os.sched_getaffinity(0) == before


def test_latency_sets_are_seeded_and_sized():
    cfg = BenchmarkConfig(batch1_samples=10, large_batch=8, large_batches=5, seed=1)
    a, b = bm.latency_sets(30, cfg), bm.latency_sets(30, cfg)
    assert a == b and len(a.single) == 10 and len(set(a.single)) == 10
    assert [len(x) for x in a.batches] == [8] * 5
    assert all(len(set(x)) == 8 for x in a.batches)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="benchmark.rounds"):
        BenchmarkConfig.from_dict({"rounds": 0}, prefix="benchmark")
    with pytest.raises(ConfigError, match="benchmark.onestep"):
        BenchmarkConfig.from_dict({"onestep": "tensorrt"}, prefix="benchmark")
    assert BenchmarkConfig.from_dict(BenchmarkConfig().to_dict()) == BenchmarkConfig()


# ------------------------------------------------------------------------------ end to end on a tiny engine


class Logits(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).logits


def make_onnx_engine(model_dir: Path, out: Path, variant: str) -> Path:
    from slimformer.modeling import load_classifier

    out.mkdir(parents=True)
    model = Logits(load_classifier(model_dir)).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(model, (ids, mask), str(out / "model.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False, dynamic_axes=axes)  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    write_manifest(out, format="onnx", precision="fp32", variant=variant, source_model=str(model_dir), labels=LABELS)
    return out


@pytest.fixture
def data_dir(tmp_path, tiny_rows) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "test.jsonl", tiny_rows)
    write_jsonl(d / "val.jsonl", tiny_rows[:20])
    (d / "card.json").write_text(json.dumps({"labels": LABELS}))
    return d


TINY = BenchmarkConfig(max_length=32, batch1_samples=6, large_batch=4, large_batches=2, repeats=2, rounds=3, warmup=1,
                       eval_batch_size=16, zip_level=1, onestep="none", num_threads=1, peak_rss=False)  # fmt: skip


def test_tiny_engine_end_to_end_through_the_stage(tmp_path, tiny_bert_dir, data_dir, tiny_rows, monkeypatch):
    engines = tmp_path / "engines"
    make_onnx_engine(tiny_bert_dir, engines / "tiny_fp32_onnx", "tiny_fp32_onnx")
    skipped = engines / "tensorrt_fp16"
    skipped.mkdir()
    write_manifest(skipped, format="tensorrt", precision="fp16", variant="tensorrt_fp16", source_model="x",
                   labels=LABELS, status="skipped", reason="no CUDA device")  # fmt: skip
    shutil.copytree(engines / "tiny_fp32_onnx", engines / "best")  # the report's copy: never measured twice
    params = TINY.to_dict() | {"peak_rss": True}
    (tmp_path / "params.yaml").write_text(json.dumps({"benchmark": params}), encoding="utf-8")  # JSON is YAML
    monkeypatch.setitem(config_module.SECTIONS, "benchmark", BenchmarkConfig)
    out = tmp_path / "metrics" / "benchmark.json"
    argv = ["--params", str(tmp_path / "params.yaml"), "--engines", str(engines), "--teacher", str(tiny_bert_dir),
            "--data", str(data_dir), "--onestep", str(tmp_path / "onestep"), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["benchmark.py", *argv])
    runpy.run_path(str(ROOT / "stages" / "benchmark.py"), run_name="__main__")

    res = json.loads(out.read_text())
    v = res["variants"]
    assert set(v) == {baselines.TEACHER, "tiny_fp32_onnx", "tensorrt_fp16"}
    assert v["tensorrt_fp16"] == {"role": "candidate", "path": str(skipped), "status": "skipped", "format": "tensorrt",
                                  "precision": "fp16", "source_model": "x", "reason": "no CUDA device"}  # fmt: skip
    e = v["tiny_fp32_onnx"]
    assert e["runtime"] == "onnxruntime-cpu" and e["test_rows"] == len(tiny_rows)
    for s in ("batch_1", "batch_4"):
        lat = e["latency"][s]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
        assert lat["calls"] == 2 * (6 if s == "batch_1" else 2) and lat["throughput_sps"] > 0
        assert set(e["speedup_vs_teacher"][s]) >= {"p50", "p95", "p99"}
        assert v[baselines.TEACHER]["speedup_vs_teacher"][s]["p50"] == 1.0
    assert e["parameters"] == v[baselines.TEACHER]["parameters"] == sum(p.numel() for p in _model(tiny_bert_dir).parameters())
    assert 0 < e["zip_bytes"] and e["model_bytes"] < e["size_bytes"]
    assert e["peak_rss_mb"] > 0 and v[baselines.TEACHER]["peak_rss_mb"] > 0 and res["settings"]["rss_method"] == memory.RSS_METHOD
    assert res["machine"]["threads_used"] == 1 and "avx2" in res["machine"]["cpu_flags"]
    assert res["machine"]["pinning"]["pinned"] is False and "1 thread(s)" in res["machine"]["pinning"]["reason"]
    assert set(res["machine"]["timing_contention"]) == {"other_processes_cpu_share", "steal_share"}
    assert len(res["settings"]["rounds_order"]) == 3 and not (tmp_path / "onestep").exists()

    # accuracy through ONNX Runtime, recomputed by hand from the engine's own logits, one sentence at a time
    import onnxruntime as ort

    from slimformer.modeling import load_tokenizer

    sess = ort.InferenceSession(str(engines / "tiny_fp32_onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = load_tokenizer(engines / "tiny_fp32_onnx")
    preds = []
    for row in tiny_rows:
        ids = np.asarray([tok(row["text"], truncation=True, max_length=32)["input_ids"]], dtype=np.int64)
        preds.append(int(sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].argmax()))
    labels = np.asarray([r["label"] for r in tiny_rows])
    preds = np.asarray(preds)
    assert e["accuracy"] == pytest.approx(float((preds == labels).mean()))
    f1 = [2 * ((preds == c) & (labels == c)).sum() / max((preds == c).sum() + (labels == c).sum(), 1) for c in (0, 1)]
    assert e["macro_f1"] == pytest.approx(float(np.mean(f1)))
    # a float engine predicts alike one sentence at a time and in padded batches
    assert e["batch_agreement"] == 1.0 and e["accuracy_padded"] == e["accuracy"] and e["batch_disagreements"] == 0


class BatchDependent:
    """A runner whose prediction for a row depends on its batch: class 1 alone, class 0 in a batch of several."""

    runtime = "fake"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(input_ids), 2), dtype=np.float32)
        logits[:, 1 if len(input_ids) == 1 else 0] = 1.0
        return logits


def test_accuracy_is_measured_one_sentence_a_call_and_in_padded_batches(tiny_bert_dir):
    from slimformer.data import Example
    from slimformer.modeling import load_tokenizer

    examples = [Example(f"a film number {i}" + " long" * (i % 5), int(i < 7)) for i in range(10)]  # 7 of class 1
    got = bm.accuracy(BatchDependent(), load_tokenizer(tiny_bert_dir), examples, BenchmarkConfig(eval_batch_size=4))
    # as served every row is alone (class 1): 7 of 10 right; in padded batches of 4, 4 and 2 every row is class 0
    assert got["accuracy"] == pytest.approx(0.7) and got["accuracy_padded"] == pytest.approx(0.3)
    assert got["batch_agreement"] == 0.0 and got["batch_disagreements"] == 10 and got["test_rows"] == 10


def test_peak_rss_is_measured_in_a_child_that_imports_only_the_runtime(tmp_path, tiny_bert_dir):
    engine = make_onnx_engine(tiny_bert_dir, tmp_path / "e", "e")
    v = variants.Variant("e", "engine", engine, manifest=json.loads((engine / "manifest.json").read_text()))
    ids = np.full((4, 16), 1000, dtype=np.int64)
    got = memory.peak_rss(v, [(ids, np.ones_like(ids))], num_threads=1)
    assert got["peak_rss_mb"] > got["rss_delta_mb"] > 0
    assert got["peak_rss_mb"] < 400  # no torch in the child (torch alone takes more), and not the parent's peak
    broken = variants.Variant("e", "engine", tmp_path / "missing", manifest=v.manifest)
    assert memory.peak_rss(broken, [(ids, np.ones_like(ids))], 1)["peak_rss_mb"] is None


def _model(path: Path):
    from slimformer.modeling import load_classifier

    return load_classifier(path)


def test_label_mismatch_and_duplicate_variant_are_errors(tmp_path, tiny_bert_dir, data_dir):
    engines = tmp_path / "engines"
    make_onnx_engine(tiny_bert_dir, engines / "a", "same")
    shutil.copytree(engines / "a", engines / "b")
    with pytest.raises(SlimformerError, match="'same' is used twice"):
        bm.discover(engines)
    shutil.rmtree(engines / "b")
    (data_dir / "card.json").write_text(json.dumps({"labels": ["neg", "pos"]}))
    with pytest.raises(SlimformerError, match="class names"):
        bm.benchmark(TINY, engines, tiny_bert_dir, data_dir, None, log=lambda *_: None)



def test_benchmark_refuses_a_onestep_baseline_built_by_another_method(tmp_path, tiny_bert_dir, data_dir):
    engines = tmp_path / "engines"
    make_onnx_engine(tiny_bert_dir, engines / "a", "a")
    onestep = tmp_path / "onestep"
    baselines.build_onestep_baseline(tiny_bert_dir, onestep, "none")  # the stage's out with params onestep: none
    asks = BenchmarkConfig.from_dict(TINY.to_dict() | {"onestep": "onnxruntime"}, prefix="benchmark")
    with pytest.raises(SlimformerError, match="built with 'none', params ask for 'onnxruntime'"):
        bm.benchmark(asks, engines, tiny_bert_dir, data_dir, onestep, log=lambda *_: None)

def test_onestep_baseline_falls_back_to_onnxruntime_and_records_why(tmp_path, tiny_bert_dir, monkeypatch):
    def broken(teacher_dir, tmp):
        raise RuntimeError("optimum unavailable")

    monkeypatch.setitem(baselines.ONESTEP_BUILDERS, "optimum", broken)
    out = tmp_path / "onestep"
    m = baselines.build_onestep_baseline(tiny_bert_dir, out, "optimum")
    assert m["tool"] == "onnxruntime" and "optimum unavailable" in m["optimum_error"]
    assert (m["format"], m["precision"], m["variant"], m["role"]) == ("onnx", "int8", baselines.ONESTEP, "baseline")
    runner = variants.open_runner(variants.Variant(baselines.ONESTEP, "engine", out, "baseline", m), 1)
    ids = np.asarray([[101, 2023, 2003, 102]], dtype=np.int64)
    assert runner(ids, np.ones_like(ids)).shape == (1, 2)
    off = baselines.build_onestep_baseline(tiny_bert_dir, out, "none")  # off: a skipped engine, so the stage's out exists
    assert off["status"] == "skipped" and not (out / "model.onnx").exists()


def test_onestep_baseline_with_optimum(tmp_path, tiny_bert_dir):
    out = tmp_path / "onestep"
    m = baselines.build_onestep_baseline(tiny_bert_dir, out, "optimum")
    assert m["tool"] == "optimum" and "optimum_error" not in m
    runner = variants.open_runner(variants.Variant(baselines.ONESTEP, "engine", out, "baseline", m), 1)
    assert isinstance(runner, TokenTypeZeros)  # optimum's graph also takes token_type_ids
    ids = np.asarray([[101, 2023, 2003, 102], [101, 2023, 102, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    ref = _model(tiny_bert_dir)(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    assert (runner(ids, mask).argmax(-1) == ref.detach().numpy().argmax(-1)).all()


def test_zip_size_is_the_size_of_a_real_deflate_archive(tmp_path):
    import zipfile

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(np.random.default_rng(0).bytes(20_000))  # incompressible
    (tmp_path / "sub" / "b.txt").write_text("slimformer " * 5_000)  # very compressible
    files = [tmp_path / "a.bin", tmp_path / "sub" / "b.txt"]
    n = measure.zip_size(files, tmp_path, level=9)
    with zipfile.ZipFile(tmp_path / "ref.zip", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(files[0], "a.bin")
        z.write(files[1], "sub/b.txt")
    assert n == (tmp_path / "ref.zip").stat().st_size
    assert 20_000 < n < 20_000 + 55_000 // 10
    vs = [variants.Variant(name, "pytorch", tmp_path, "baseline") for name in ("p", "q", "r")]
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    one = variants.size_info(vs[0], 6)
    assert variants.size_infos(vs, 6, threads=2) == {"p": one, "q": one, "r": one}  # threads change nothing
