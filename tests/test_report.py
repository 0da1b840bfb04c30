"""Report: the Pareto frontier, engine selection under the accuracy budget, the copy to best/, report.md and the plot."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from slimformer import config as config_module
from slimformer import report as rp
from slimformer import selection as sel_mod
from slimformer.engines import deploy
from slimformer.baselines import ONESTEP, TEACHER
from slimformer.config import ReportConfig, SelectConfig
from slimformer.engines import MANIFEST, read_manifest, write_manifest
from slimformer.errors import CheckpointError, ConfigError
from slimformer.io import sha256_file

from conftest import write_jsonl

LABELS = ["rotten", "fresh"]
ROOT = Path(__file__).resolve().parents[1]


def entry(accuracy: float, p50: float, role: str = "candidate", fmt: str = "onnx", precision: str = "int8",
          path: str = "x") -> dict:  # fmt: skip
    """One variant as the benchmark writes it (only the fields the report reads)."""
    lat = {b: {"p50_ms": p50 * k, "p95_ms": p50 * k * 1.2, "p99_ms": p50 * k * 1.5, "round_p50_ms": [p50 * k]}
           for b, k in (("batch_1", 1), ("batch_32", 20))}  # fmt: skip
    return {"role": role, "path": path, "status": "ok", "format": fmt, "precision": precision,
            "runtime": "pytorch" if fmt == "pytorch" else "onnxruntime-cpu", "accuracy": accuracy,
            "macro_f1": accuracy - 0.01, "latency": lat, "size_bytes": int(1e6 / p50), "zip_bytes": int(8e5 / p50),
            "model_bytes": int(9e5 / p50), "parameters": 1000, "peak_rss_mb": 100.0}  # fmt: skip


def fake_bench(variants: dict[str, dict]) -> dict:
    teacher = variants[TEACHER]
    for v in variants.values():
        if v["status"] == "ok":
            v["speedup_vs_teacher"] = {b: {"p50": teacher["latency"][b]["p50_ms"] / s["p50_ms"]} for b, s in v["latency"].items()}
            v["size_ratio_vs_teacher"] = teacher["model_bytes"] / v["size_bytes"]
            if ONESTEP in variants:
                one = variants[ONESTEP]["latency"]
                v["speedup_vs_onestep"] = {b: {"p50": one[b]["p50_ms"] / s["p50_ms"]} for b, s in v["latency"].items()}
    machine = {"cpu_model": "test cpu", "cpu_flags": {"avx2": True, "avx512f": False}, "logical_cores": 2, "usable_cores": 2,
               "threads_used": 2, "python": "3.11", "versions": {"onnxruntime": "1.32.0"},
               "load_average_1m_at_start": 0.5, "load_average_1m_at_end": 0.5}  # fmt: skip
    settings = {"test_rows": 100, "batch1_samples": 200, "large_batches": 8, "large_batch": 32, "warmup": 10,
                "rounds": 5, "rss_method": "child"}  # fmt: skip
    return {"machine": machine, "settings": settings, "variants": variants}


def standard_variants() -> dict[str, dict]:
    return {
        TEACHER: entry(0.84, 20.0, "baseline", "pytorch", "fp32"),
        ONESTEP: entry(0.835, 6.0, "baseline"),
        "final_fp32_onnx": entry(0.836, 2.0, precision="fp32"),
        "final_int8_onnx": entry(0.832, 0.8),  # within 1 point: the pick
        "too_lossy_int8": entry(0.80, 0.5),  # faster, but 4 points down
        "final_int8_torchscript": entry(0.833, 3.0, fmt="torchscript"),
        "tensorrt_fp16": {"role": "candidate", "path": "y", "status": "skipped", "format": "tensorrt",
                          "precision": "fp16", "reason": "no CUDA device"},  # fmt: skip
    }


def test_pareto_frontier_keeps_only_undominated_points():
    pts = [("slow_best", 10.0, 0.9), ("fast_bad", 1.0, 0.6), ("mid", 3.0, 0.8), ("dominated", 5.0, 0.7), ("tie_slower", 3.0, 0.75)]
    assert sel_mod.pareto_frontier(pts) == {"slow_best", "fast_bad", "mid"}
    assert sel_mod.pareto_frontier([]) == set()


def test_selects_fastest_within_budget_and_says_why():
    sel = sel_mod.select_engine(fake_bench(standard_variants()), SelectConfig(max_accuracy_drop=0.01))
    assert sel["variant"] == "final_int8_onnx"
    assert "too_lossy_int8" in sel["why"] and "0.8000" in sel["why"]
    assert sel["accuracy_drop"] == pytest.approx(0.008)
    assert sel["speedup_vs_teacher_batch1_p50"] == pytest.approx(25.0)
    assert sel["speedup_vs_onestep_batch1_p50"] == pytest.approx(7.5)
    assert {r["variant"]: r["qualifies"] for r in sel["considered"]}["too_lossy_int8"] is False
    excluded = {e["variant"]: e["why"] for e in sel["excluded"]}
    assert "skipped: no CUDA device" in excluded["tensorrt_fp16"]
    assert ONESTEP in excluded and TEACHER in excluded


def test_budget_judges_the_lower_of_batch1_and_padded_accuracy():
    v = standard_variants()
    v["final_int8_onnx"]["accuracy_padded"] = 0.825  # fine one sentence at a time, 1.5 points down in padded batches
    v["final_int8_onnx"]["batch_agreement"] = 0.98
    sel = sel_mod.select_engine(fake_bench(v), SelectConfig(max_accuracy_drop=0.01))
    assert sel["variant"] == "final_fp32_onnx"
    row = {r["variant"]: r for r in sel["considered"]}["final_int8_onnx"]
    assert row["qualifies"] is False and row["accuracy"] == 0.825 and row["accuracy_batch1"] == 0.832
    assert "final_int8_onnx (0.8250)" in sel["why"]
    v["final_int8_onnx"]["accuracy_padded"] = 0.835  # the lower figure is now batch 1: qualifies again
    sel = sel_mod.select_engine(fake_bench(v), SelectConfig(max_accuracy_drop=0.01))
    assert sel["variant"] == "final_int8_onnx" and sel["accuracy"] == 0.832 and sel["accuracy_padded"] == 0.835
    assert sel["batch_agreement"] == 0.98 and sel["accuracy_drop"] == pytest.approx(0.008)


def test_looser_budget_picks_the_faster_lossy_engine():
    sel = sel_mod.select_engine(fake_bench(standard_variants()), SelectConfig(max_accuracy_drop=0.05))
    assert sel["variant"] == "too_lossy_int8"


def test_format_and_precision_restrictions():
    bench = fake_bench(standard_variants())
    assert sel_mod.select_engine(bench, SelectConfig(formats=("torchscript",)))["variant"] == "final_int8_torchscript"
    assert sel_mod.select_engine(bench, SelectConfig(precisions=("fp32",)))["variant"] == "final_fp32_onnx"
    with pytest.raises(sel_mod.NoEngineQualifies, match="no deployable engine"):
        sel_mod.select_engine(bench, SelectConfig(formats=("tensorrt",)))
    with pytest.raises(ConfigError, match="formats"):
        SelectConfig.from_dict({"formats": ["tflite"]}, prefix="report.select")


def test_no_engine_qualifies_fails_naming_best_accuracy_and_budget():
    v = standard_variants()
    for name in ("final_fp32_onnx", "final_int8_onnx", "final_int8_torchscript"):
        v[name]["accuracy"] = 0.81
    v["final_fp32_onnx"]["accuracy"] = 0.815
    with pytest.raises(sel_mod.NoEngineQualifies) as e:
        sel_mod.select_engine(fake_bench(v), SelectConfig(max_accuracy_drop=0.01))
    msg = str(e.value)
    assert "no engine qualifies" in msg and "final_fp32_onnx" in msg and "0.8150" in msg
    assert "budget 0.8300" in msg and "0.8400" in msg and "max_accuracy_drop 0.01" in msg
    # the one-step baseline (0.835) would qualify, but baselines are not candidates unless asked for
    assert sel_mod.select_engine(fake_bench(v), SelectConfig(include_baselines=True))["variant"] == ONESTEP


def make_engine(path: Path, variant: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.ts").write_bytes(b"not really torchscript, only hashed")
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    write_manifest(path, format="torchscript", precision="int8", variant=variant, source_model="nowhere", labels=LABELS)
    return path


def test_copy_engine_verifies_before_and_after(tmp_path):
    src = make_engine(tmp_path / "engines" / "e", "e")
    best = tmp_path / "engines" / "best"
    m = deploy.copy_engine(src, best)
    assert m == read_manifest(src) and sorted(p.name for p in best.iterdir()) == ["manifest.json", "model.ts", "vocab.txt"]
    (src / "model.ts").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="sha256"):
        deploy.copy_engine(src, best)
    assert (best / "model.ts").read_bytes().startswith(b"not really")  # the previous copy is untouched


@pytest.mark.parametrize("lax_verify", [False, True])
def test_copy_engine_cannot_write_outside_best(tmp_path, monkeypatch, lax_verify):
    """A manifest key with ../ is refused by verify_engine, and by copy_engine itself were verification lax."""
    src = make_engine(tmp_path / "a" / "engines" / "e", "e")
    (tmp_path / "a" / "payload.txt").write_text("escaped")
    manifest = json.loads((src / MANIFEST).read_text())
    key = "../../payload.txt"  # read from a/payload.txt; written (best is one level deeper) to a/engines/payload.txt
    manifest["files"][key] = sha256_file(tmp_path / "a" / "payload.txt")
    (src / MANIFEST).write_text(json.dumps(manifest))
    if lax_verify:
        monkeypatch.setattr(deploy, "verify_engine", lambda d: json.loads((Path(d) / MANIFEST).read_text()))
    best = tmp_path / "a" / "engines" / "deploy" / "best"
    with pytest.raises(CheckpointError, match=r"'\.\./\.\./payload\.txt'"):
        deploy.copy_engine(src, best)
    assert not (tmp_path / "a" / "engines" / "payload.txt").exists() and not best.exists()


def test_make_report_writes_rows_plot_data_and_best(tmp_path):
    v = standard_variants()
    v["final_int8_onnx"]["path"] = str(make_engine(tmp_path / "engines" / "final_int8_onnx", "final_int8_onnx"))
    bench = fake_bench(v)
    bench["machine"]["pinning"] = {"pinned": True, "timing_core": 0, "ort_worker_cores": [1]}
    out = tmp_path / "reports"
    cfg = ReportConfig(entropy_batches=0)
    sel, failure = sel_mod.choose(bench, cfg.select)
    deploy.copy_engine(sel["source_dir"], tmp_path / "best")
    rp.make_report(cfg, bench, sel, failure, out / "report.md", out / "pareto.png", out / "pareto.json")
    assert sel["variant"] == "final_int8_onnx" and failure is None
    assert "calling thread ran on core 0 and ONNX Runtime's worker thread(s) on core(s) 1." in (out / "report.md").read_text()
    assert read_manifest(tmp_path / "best")["variant"] == "final_int8_onnx"
    text = (out / "report.md").read_text()
    for name, e in v.items():
        if e["status"] == "ok":
            assert f"| {name} |" in text
    assert "tensorrt_fp16" in text and "no CUDA device" in text
    assert "![accuracy vs batch-1 latency](pareto.png)" in text
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    data = json.loads((out / "pareto.json").read_text())
    assert {d["variant"] for d in data} == {n for n, e in v.items() if e["status"] == "ok"}
    assert all(set(d) == {"variant", "role", "latency_ms", "accuracy", "frontier"} for d in data)
    assert {d["variant"] for d in data if d["frontier"]} == {"too_lossy_int8", "final_int8_onnx", "final_fp32_onnx", TEACHER}


def test_make_report_without_a_qualifying_engine_writes_the_report_then_fails(tmp_path):
    v = standard_variants()
    for name in ("final_fp32_onnx", "final_int8_onnx", "final_int8_torchscript"):
        v[name]["accuracy"] = 0.7
    out = tmp_path / "reports"
    with pytest.raises(sel_mod.NoEngineQualifies, match="no engine qualifies"):
        rp.make_report(ReportConfig(entropy_batches=0), fake_bench(v), *sel_mod.choose(fake_bench(v), SelectConfig()),
                       out / "report.md", out / "pareto.png", out / "pareto.json")  # fmt: skip
    assert "No engine selected" in (out / "report.md").read_text()


def test_parameter_groups_and_attention_entropy_of_a_tiny_bert(tmp_path, tiny_bert_dir, tiny_rows):
    from slimformer.attention import attention_entropy
    from slimformer.modeling import load_classifier

    groups = rp.parameter_groups(tiny_bert_dir)
    model = load_classifier(tiny_bert_dir)
    assert groups["total"] == sum(p.numel() for p in model.parameters())
    assert groups["embeddings"] == sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n)
    assert groups["classifier"] == 32 * 2 + 2 and groups["other"] == 0
    assert min(groups["attention"], groups["ffn"], groups["pooler"]) > 0

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "val.jsonl", tiny_rows)
    ent = attention_entropy(tiny_bert_dir, data, ReportConfig(entropy_batches=2, entropy_batch_size=8))
    assert ent["batches"] == 2 and ent["rows"] == 16
    assert [len(layer["entropy"]) for layer in ent["layers"]] == [4, 4]
    assert all(0.0 <= e <= 1.0 for layer in ent["layers"] for e in layer["entropy"])
    table = rp._entropy_table(ent, None)
    assert table[-1].startswith("| 1 |") and table[-1].count("|") == 6


def test_experiment_points_read_dvc_exp_show_json():
    def state(rev, name, bench, experiments=None):
        metrics = {"artifacts/metrics/benchmark.json": {"data": bench}} if bench else {}
        return {"rev": rev, "name": name, "data": {"rev": rev, "metrics": metrics, "params": {}}, "error": None,
                "experiments": experiments}  # fmt: skip

    slow = fake_bench(standard_variants())
    faster = fake_bench({TEACHER: entry(0.84, 20.0, "baseline", "pytorch", "fp32"), "final_int8_onnx": entry(0.838, 0.4)})
    exp_show = [
        state("workspace", None, faster),  # the workspace holds the last experiment's results: counted once
        state("a" * 40, "main", slow, [{"revs": [state("b" * 40, "tiny-heads", faster)], "executor": None, "name": None}]),
    ]
    pts = rp.experiment_points(exp_show, "artifacts/metrics/benchmark.json")
    names = [p["variant"] for p in pts]
    assert names[0] == "tiny-heads:final_int8_onnx" and not any(n.startswith("workspace") for n in names)
    assert f"main:{TEACHER}" not in names and "main:tensorrt_fp16" not in names  # baselines and skipped left out
    assert {p["variant"] for p in pts if p["frontier"]} == {"tiny-heads:final_int8_onnx"}
    assert pts[0]["speedup"] == pytest.approx(50.0)
    table = rp.frontier_table(pts)
    assert table.splitlines()[1].startswith("* tiny-heads:final_int8_onnx")
    with_baselines = rp.experiment_points(exp_show, "artifacts/metrics/benchmark.json", include_baselines=True)
    assert f"main:{TEACHER}" in {p["variant"] for p in with_baselines}
    assert rp.experiment_points([], "x") == [] and "no experiment" in rp.frontier_table([])


def test_report_stage_writes_selection_or_fails_with_one_clear_line(tmp_path, monkeypatch, capsys):
    v = standard_variants()
    v["final_int8_onnx"]["path"] = str(make_engine(tmp_path / "engines" / "final_int8_onnx", "final_int8_onnx"))
    bench_path = tmp_path / "benchmark.json"
    bench_path.write_text(json.dumps(fake_bench(v)))
    monkeypatch.setitem(config_module.SECTIONS, "report", ReportConfig)
    params = tmp_path / "params.yaml"
    r = tmp_path / "reports"
    argv = ["--params", str(params), "--benchmark", str(bench_path), "--teacher", "unused", "--data", "unused",
            "--report", str(r / "report.md"), "--pareto-png", str(r / "pareto.png"), "--pareto-data", str(r / "pareto.json"),
            "--best", str(tmp_path / "best"), "--selection", str(tmp_path / "selection.json")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["report.py", *argv])

    params.write_text(json.dumps({"report": {"entropy_batches": 0, "select": {"max_accuracy_drop": 0.01}}}))
    runpy.run_path(str(ROOT / "stages" / "report.py"), run_name="__main__")
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["variant"] == "final_int8_onnx" and (tmp_path / "best" / "manifest.json").is_file()
    assert "selected final_int8_onnx" in capsys.readouterr().out

    params.write_text(json.dumps({"report": {"entropy_batches": 0, "select": {"max_accuracy_drop": 0.0}}}))
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "stages" / "report.py"), run_name="__main__")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimformer report: error: no engine qualifies") and "\n" not in err


def test_busy_warning_names_other_processes_and_steal_only_above_the_threshold():
    quiet = {"usable_cores": 2, "timing_contention": {"other_processes_cpu_share": 0.01, "steal_share": 0.02}}
    assert rp.busy_warning(quiet) == []
    assert rp.busy_warning({"usable_cores": 2, "load_average_1m_at_start": 9.0}) == []  # no contention figures
    busy = {"usable_cores": 2, "timing_contention": {"other_processes_cpu_share": 0.2, "steal_share": 0.03}}
    text = "".join(rp.busy_warning(busy))
    assert "Busy machine" in text and "20.0%" in text and "3.0%" in text
    stolen = {"usable_cores": 2, "timing_contention": {"other_processes_cpu_share": 0.0, "steal_share": 0.12}}
    assert "12.0% (steal)" in "".join(rp.busy_warning(stolen))
