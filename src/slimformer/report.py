"""The report: every variant side by side, the accuracy/latency frontier, and the engine to deploy.

Selection rule (``report.select``): among deployable engines (not the PyTorch teacher, not a
skipped engine, optionally restricted to some formats and precisions), the one with the lowest
batch-1 p50 latency whose test accuracy is at most ``max_accuracy_drop`` (absolute) below the
teacher's, both from the same benchmark run. The accuracy judged is the lower of the engine's two
figures: one sentence per call (as served) and in padded batches (:func:`budget_accuracy`), so the
selected engine holds the budget however it is fed; dynamic int8 predictions can move with the
batch (the benchmark reports both and their agreement). If none qualifies, :func:`select_engine`
raises and names the best accuracy reached and the budget; it never falls back silently.

The chosen engine directory is copied to ``artifacts/engines/best/`` with its manifest and
verified (every sha256) before and after the copy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from slimformer.baselines import ONESTEP, TEACHER
from slimformer.config import ReportConfig, SelectConfig
from slimformer.engines import MANIFEST, read_manifest, safe_member, verify_engine
from slimformer.errors import CheckpointError, SlimformerError
from slimformer.io import atomic_dir, atomic_file
from slimformer.measure import safetensors_shapes
from slimformer.variants import source_model_dir

LATENCY = ("batch_1", "p50_ms")  # the selection and Pareto latency: batch-1 p50


class NoEngineQualifies(SlimformerError):
    """No deployable engine is within the accuracy budget."""


# ------------------------------------------------------------------------------ frontier and selection


def latency_of(entry: dict[str, Any], batch: str = LATENCY[0], stat: str = LATENCY[1]) -> float:
    return float(entry["latency"][batch][stat])


def pareto_points(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{variant, role, latency_ms, accuracy, frontier}]`` for every measured variant, fastest first."""
    pts = [
        {"variant": name, "role": v["role"], "precision": v["precision"], "format": v["format"],
         "latency_ms": latency_of(v), "accuracy": float(v["accuracy"])}
        for name, v in bench["variants"].items() if v["status"] == "ok"
    ]  # fmt: skip
    front = pareto_frontier([(p["variant"], p["latency_ms"], p["accuracy"]) for p in pts])
    for p in pts:
        p["frontier"] = p["variant"] in front
    return sorted(pts, key=lambda p: (p["latency_ms"], -p["accuracy"]))


def pareto_frontier(points: list[tuple[str, float, float]]) -> set[str]:
    """Names of the points no other point beats: nothing at most as slow and at least as accurate, better in one.

    ``points`` are ``(name, latency, accuracy)``; lower latency and higher accuracy are better.
    """
    front, best = set(), float("-inf")
    for name, _lat, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:
            front.add(name)
            best = acc
    return front


def candidates(bench: dict[str, Any], cfg: SelectConfig) -> tuple[list[str], dict[str, str]]:
    """(deployable variants, {excluded variant: why}) under ``cfg``'s format/precision/baseline rules."""
    keep, why = [], {}
    for name, v in bench["variants"].items():
        if name == TEACHER or v["format"] == "pytorch":
            why[name] = "the PyTorch baseline, not a deployable engine"
        elif v["status"] != "ok":
            why[name] = f"skipped: {v.get('reason', 'no reason recorded')}"
        elif v["role"] == "baseline" and not cfg.include_baselines:
            why[name] = "a baseline (report.select.include_baselines: false)"
        elif cfg.formats and v["format"] not in cfg.formats:
            why[name] = f"format {v['format']} not in report.select.formats {list(cfg.formats)}"
        elif cfg.precisions and v["precision"] not in cfg.precisions:
            why[name] = f"precision {v['precision']} not in report.select.precisions {list(cfg.precisions)}"
        else:
            keep.append(name)
    return keep, why


def budget_accuracy(entry: dict[str, Any]) -> float:
    """The accuracy an engine is judged on: the lower of as served (batch 1) and padded batches.

    A benchmark file written before both were measured has ``accuracy`` alone.
    """
    return min(float(entry["accuracy"]), float(entry.get("accuracy_padded", entry["accuracy"])))


def select_engine(bench: dict[str, Any], cfg: SelectConfig) -> dict[str, Any]:
    """The fastest deployable engine (batch-1 p50) within ``cfg.max_accuracy_drop`` of the teacher's accuracy.

    Returns the selection record; raises NoEngineQualifies (naming the best accuracy reached and
    the budget) when no engine is accurate enough, or when no engine is deployable at all.
    """
    variants = bench["variants"]
    if variants.get(TEACHER, {}).get("status") != "ok":
        raise SlimformerError(f"benchmark has no measured {TEACHER} baseline; cannot apply an accuracy budget")
    teacher = variants[TEACHER]
    budget = budget_accuracy(teacher) - cfg.max_accuracy_drop
    names, excluded = candidates(bench, cfg)
    if not names:
        raise NoEngineQualifies(
            "no engine qualifies: no deployable engine was measured ("
            + "; ".join(f"{n}: {w}" for n, w in excluded.items()) + ")"
        )
    table = []
    for name in sorted(names, key=lambda n: latency_of(variants[n])):
        v = variants[name]
        judged = budget_accuracy(v)
        ok = judged >= budget - 1e-12
        table.append({"variant": name, "accuracy": judged, "accuracy_batch1": v["accuracy"],
                      "accuracy_padded": v.get("accuracy_padded"), "batch1_p50_ms": latency_of(v), "qualifies": ok})  # fmt: skip
    qualified = [row for row in table if row["qualifies"]]
    if not qualified:
        best = max(table, key=lambda r: r["accuracy"])
        raise NoEngineQualifies(
            f"no engine qualifies: the most accurate deployable engine, {best['variant']}, reaches test accuracy "
            f"{best['accuracy']:.4f}, below the budget {budget:.4f} = {TEACHER} accuracy {budget_accuracy(teacher):.4f} "
            f"- report.select.max_accuracy_drop {cfg.max_accuracy_drop} (engines considered: {len(table)}). "
            "Recover accuracy upstream, or raise the budget deliberately."
        )
    pick = qualified[0]["variant"]
    v = variants[pick]
    faster = [r for r in table if r["batch1_p50_ms"] < qualified[0]["batch1_p50_ms"]]
    why = (
        f"fastest batch-1 p50 ({latency_of(v):.3f} ms) of {len(qualified)} deployable engines whose test accuracy is "
        f"within {cfg.max_accuracy_drop:g} of {TEACHER} ({budget_accuracy(teacher):.4f}; budget {budget:.4f}; "
        "an engine's accuracy is the lower of one sentence per call and padded batches)"
    )
    if faster:
        why += "; faster but below the budget: " + ", ".join(f"{r['variant']} ({r['accuracy']:.4f})" for r in faster)
    return _selection_record(bench, pick, why, budget, cfg, table, excluded)


def _selection_record(bench, pick, why, budget, cfg, table, excluded) -> dict[str, Any]:
    variants = bench["variants"]
    v, teacher = variants[pick], variants[TEACHER]
    lat = {b: {k: s[k] for k in ("p50_ms", "p95_ms", "p99_ms")} for b, s in v["latency"].items()}
    rec: dict[str, Any] = {
        "variant": pick,
        "format": v["format"],
        "precision": v["precision"],
        "runtime": v.get("runtime"),
        "source_dir": v["path"],
        "why": why,
        "accuracy": v["accuracy"],  # one sentence per call, as served
        "macro_f1": v["macro_f1"],
        "accuracy_padded": v.get("accuracy_padded"),
        "batch_agreement": v.get("batch_agreement"),
        "teacher_accuracy": teacher["accuracy"],
        "accuracy_drop": round(budget_accuracy(teacher) - budget_accuracy(v), 6),
        "max_accuracy_drop": cfg.max_accuracy_drop,
        "accuracy_budget": round(budget, 6),
        "batch1_p50_ms": latency_of(v),
        "speedup_vs_teacher_batch1_p50": v["speedup_vs_teacher"]["batch_1"]["p50"],
        "size_bytes": v["size_bytes"],
        "zip_bytes": v["zip_bytes"],
        "size_ratio_vs_teacher": v["size_ratio_vs_teacher"],
        "latency": lat,
        "speedup_vs_teacher": {b: s["p50"] for b, s in v["speedup_vs_teacher"].items()},
    }
    if ONESTEP in variants and "speedup_vs_onestep" in v:
        rec["speedup_vs_onestep_batch1_p50"] = v["speedup_vs_onestep"]["batch_1"]["p50"]
        rec["speedup_vs_onestep"] = {b: s["p50"] for b, s in v["speedup_vs_onestep"].items()}
        rec["onestep_accuracy"] = variants[ONESTEP]["accuracy"]
    rec["considered"] = table  # lists: kept out of `dvc metrics show` columns, still in the file
    rec["excluded"] = [{"variant": n, "why": w} for n, w in excluded.items()]
    return rec


def copy_engine(engine_dir: str | Path, best_dir: str | Path) -> dict[str, Any]:
    """Copy a verified engine directory (its manifest and every file it lists) to ``best_dir``; verify the copy.

    The copy is checked inside the temporary directory and again once in place; a mismatch
    raises CheckpointError and leaves any previous ``best_dir`` untouched.
    """
    engine_dir, best_dir = Path(engine_dir), Path(best_dir)
    manifest = verify_engine(engine_dir)  # refuses names that leave the directory, too
    with atomic_dir(best_dir) as tmp:
        for name in [*manifest["files"], MANIFEST]:
            # Checked again where the bytes go, so no name can write outside best/ whatever verify_engine allows.
            target = safe_member(tmp, name) if name != MANIFEST else tmp / MANIFEST
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise CheckpointError(f"{engine_dir / MANIFEST}: file name {name!r} would be copied outside {best_dir}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(engine_dir / name, target)
        verify_engine(tmp)
    return verify_engine(best_dir)


# ------------------------------------------------------------------------------ the final model's anatomy


def parameter_groups(model_dir: str | Path) -> dict[str, int]:
    """Parameters of a model directory by part, read from its safetensors header.

    Key names per family: BERT/RoBERTa/XLM-R/ELECTRA ``attention.*``, ``intermediate``/``output``;
    DistilBERT ``attention.*`` + ``sa_layer_norm``, ``ffn.*`` + ``output_layer_norm``, ``pre_classifier``.
    """
    groups = {"embeddings": 0, "attention": 0, "ffn": 0, "pooler": 0, "classifier": 0, "other": 0}
    for key, shape in safetensors_shapes(Path(model_dir) / "model.safetensors").items():
        size = math.prod(shape)
        if ".embeddings." in f".{key}":
            groups["embeddings"] += size
        elif ".attention." in key or ".sa_layer_norm." in key:
            groups["attention"] += size
        elif any(p in key for p in (".intermediate.", ".output.", ".ffn.", ".output_layer_norm.")):  # FFN in, out, LayerNorm
            groups["ffn"] += size
        elif "pooler." in key:
            groups["pooler"] += size
        elif key.startswith(("classifier.", "pre_classifier.")) or ".classifier." in key:
            groups["classifier"] += size
        else:
            groups["other"] += size
    groups["total"] = sum(groups.values())
    return groups


def attention_entropy(model_dir: str | Path, data_dir: str | Path, cfg: ReportConfig) -> dict[str, Any]:
    """Mean normalised attention entropy of every head (0: attends to one token, 1: uniform) on validation batches.

    Uses the pruning stage's entropy measure (importance = 1 - entropy). Heads removed by
    structured pruning are absent; ``head_ids`` gives each remaining head's original number.
    """
    from slimformer.adapters import adapter_for  # noqa: PLC0415 - torch only where it is needed
    from slimformer.data import load_split  # noqa: PLC0415
    from slimformer.modeling import load_classifier, load_tokenizer  # noqa: PLC0415
    from slimformer.prune import entropy_head_importance  # noqa: PLC0415
    from slimformer.training import batch_order, collate, encode  # noqa: PLC0415

    model = load_classifier(model_dir)
    tok = load_tokenizer(model_dir)
    data = encode(tok, load_split(Path(data_dir) / "val.jsonl"), cfg.max_length)
    order = batch_order([len(x) for x in data.input_ids], cfg.entropy_batch_size, shuffle=True, seed=0, group_by_length=False)
    batches = [collate(data, rows, tok.pad_token_id) for rows in order[: cfg.entropy_batches]]
    importance = entropy_head_importance(model, batches)
    layers = adapter_for(model).layers(model)
    return {
        "batches": len(batches),
        "rows": sum(len(b.labels) for b in batches),
        "layers": [
            {"layer": i, "head_ids": list(layer.head_ids), "entropy": [round(1 - float(x), 4) for x in imp]}
            for i, (layer, imp) in enumerate(zip(layers, importance, strict=True))
        ],
    }


# ------------------------------------------------------------------------------ outputs


def plot_pareto(points: list[dict[str, Any]], path: str | Path, budget: float | None, selected: str | None) -> None:
    """Batch-1 p50 latency (log x) against test accuracy; the frontier as a staircase; every point labelled."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    colors = {"baseline": "tab:gray", "candidate": "tab:blue"}
    for p in points:
        ax.scatter(p["latency_ms"], p["accuracy"] * 100, s=70 if p["frontier"] else 30, zorder=3,
                   color=colors.get(p["role"], "tab:blue"), edgecolor="black" if p["frontier"] else "none")  # fmt: skip
    front = [p for p in points if p["frontier"]]
    ax.plot([p["latency_ms"] for p in front], [p["accuracy"] * 100 for p in front], "-", color="tab:orange",
            lw=1.5, zorder=2, drawstyle="steps-post", label="Pareto frontier")  # fmt: skip
    if budget is not None:
        ax.axhline(budget * 100, ls="--", color="tab:red", lw=1, label="accuracy budget")
    if selected is not None:
        s = next(p for p in points if p["variant"] == selected)
        ax.scatter(s["latency_ms"], s["accuracy"] * 100, marker="*", s=300, color="gold", edgecolor="black",
                   zorder=4, label=f"selected: {selected}")  # fmt: skip
    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _pos: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.margins(x=0.15, y=0.08)
    ax.set_xlabel("batch-1 p50 latency (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs latency (grey: baselines)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _label_points(ax, points)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def _label_points(ax, points: list[dict[str, Any]], fontsize: int = 7) -> None:
    """Label every point, moving a label up or down (in steps of a line) until it overlaps no earlier one."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the axis limits, so data -> pixel positions are final
    placed: list[tuple[float, float, float, float]] = []
    char_w, line_h = fontsize * 0.62 * fig.dpi / 72, fontsize * 1.3 * fig.dpi / 72
    for p in sorted(points, key=lambda q: (q["latency_ms"], q["accuracy"])):
        x, y = ax.transData.transform((p["latency_ms"], p["accuracy"] * 100))
        w = char_w * len(p["variant"])
        for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5):
            box = (x + 5, y + 3 + k * line_h, x + 5 + w, y + 3 + (k + 1) * line_h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(p["variant"], (p["latency_ms"], p["accuracy"] * 100), textcoords="offset pixels",
                    xytext=(5, 3 + k * line_h), fontsize=fontsize,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if k else None)  # fmt: skip


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}"


def _speedup(s: dict[str, float]) -> str:
    """``6.79x (5.8-7.9)``: the pooled p50 ratio and the range of the per-round ratios, when known."""
    if s.get("p50_round_min") is not None and s["p50_round_min"] != s["p50_round_max"]:
        return f"{s['p50']:.2f}x ({s['p50_round_min']:.1f}–{s['p50_round_max']:.1f})"
    return f"{s['p50']:.2f}x"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f}"


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def variant_rows(bench: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Markdown table rows (teacher, one-step baseline, then engines fastest first) and skipped-variant lines."""
    variants = bench["variants"]
    large = f"batch_{bench['settings']['large_batch']}"
    ok = [n for n, v in variants.items() if v["status"] == "ok"]
    order = [n for n in (TEACHER, ONESTEP) if n in ok] + sorted(
        (n for n in ok if n not in (TEACHER, ONESTEP)), key=lambda n: latency_of(variants[n])
    )
    rows = []
    for n in order:
        v = variants[n]
        b1, bl = v["latency"]["batch_1"], v["latency"][large]
        sp = v["speedup_vs_teacher"]
        params = "–" if v.get("parameters") is None else f"{v['parameters'] / 1e6:.2f}"
        rss = "–" if v.get("peak_rss_mb") is None else f"{v['peak_rss_mb']:.0f}"
        rows.append(
            f"| {n} | {v['runtime']} | {v['precision']} | {v['accuracy'] * 100:.2f} | {_pct(v.get('accuracy_padded'))} "
            f"| {_pct(v.get('batch_agreement'))} | {v['macro_f1'] * 100:.2f} "
            f"| {_ms(b1['p50_ms'])} | {_ms(b1['p95_ms'])} | {_ms(bl['p50_ms'])} | {_ms(bl['p95_ms'])} "
            f"| {_speedup(sp['batch_1'])} | {_speedup(sp[large])} | {_mb(v['size_bytes'])} | {_mb(v['zip_bytes'])} "
            f"| {params} | {rss} |"
        )
    skipped = [f"- **{n}** ({v['format']}, {v['precision']}): {v.get('reason', 'no reason recorded')}"
               for n, v in variants.items() if v["status"] != "ok"]  # fmt: skip
    return rows, skipped


BUSY_SHARE = 0.05  # of the cores' time while timing, taken by other processes or by steal


def busy_warning(machine: dict[str, Any]) -> list[str]:
    """A warning when something else used the cores while the rounds ran (``timing_contention``)."""
    c = machine.get("timing_contention") or {}
    other, steal = c.get("other_processes_cpu_share"), c.get("steal_share")
    if max(other or 0.0, steal or 0.0) <= BUSY_SHARE:  # None: not measured (not Linux, or an older file)
        return []
    return ["", f"> **Busy machine**: while the rounds ran, other processes used {100 * (other or 0):.1f}% of the "
            f"{machine.get('usable_cores', '?')} cores' time and the hypervisor took {100 * (steal or 0):.1f}% (steal); "
            "latency figures are noisier than usual (ratios from the same run are still comparable)."]  # fmt: skip


def render_report(
    bench: dict[str, Any],
    selection: dict[str, Any] | None,
    failure: str | None,
    points: list[dict[str, Any]],
    pareto_png: str = "pareto.png",
    groups: dict[str, dict[str, int]] | None = None,
    entropy: dict[str, Any] | None = None,
    final_model: str | None = None,
) -> str:
    """report.md: machine, selection, every variant, frontier, the final model's parameters and attention."""
    m, s = bench["machine"], bench["settings"]
    large = f"batch_{s['large_batch']}"
    flags = [f for f, on in m["cpu_flags"].items() if on and f.startswith(("avx", "amx"))]
    out = [
        "# slimformer: benchmark and engine selection",
        "",
        f"Machine: {m['cpu_model']} ({', '.join(flags) or 'no AVX'}), {m['logical_cores']} logical cores, "
        f"threads per runtime: {m['threads_used']}; python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        f"Every ratio is to **{TEACHER}** (the fine-tuned teacher in PyTorch eager fp32) from the same run. "
        f"Accuracy: the full test split ({s['test_rows']} rows) through each engine's own runtime. Latency: "
        f"{s['batch1_samples']} real test sentences at batch 1 and {s['large_batches']} batches of {s['large_batch']} "
        f"(padded to the longest in each batch), each timed {s.get('repeats', 1)} times per variant after "
        f"{s['warmup']} warm-up calls, in {s['rounds']} interleaved rounds (every variant on the same inputs in each "
        "round, order rotated each round; ONNX Runtime threads stop spinning when a call returns, so one "
        "variant's idle threads do not hold the cores while the next is timed); percentiles pool every call.",
    ]
    pin = m.get("pinning") or {}
    if pin.get("pinned"):
        out[-1] += (f" While timing, the calling thread ran on core {pin['timing_core']} and ONNX Runtime's worker "
                    f"thread(s) on core(s) {', '.join(map(str, pin['ort_worker_cores']))}.")  # fmt: skip
    out += busy_warning(m)
    out += ["", "## Selected engine", ""]
    if selection:
        sel = selection
        out += [
            f"**{sel['variant']}** ({sel['format']}, {sel['precision']}, {sel['runtime']}), copied to "
            f"`{sel.get('copied_to', 'artifacts/engines/best')}` and re-verified.",
            "",
            f"- why: {sel['why']}",
            f"- test accuracy {sel['accuracy'] * 100:.2f}% one sentence per call, as served"
            + (f", {sel['accuracy_padded'] * 100:.2f}% in padded batches (same prediction on "
               f"{sel['batch_agreement'] * 100:.2f}% of rows)" if sel.get("accuracy_padded") is not None else "")
            + f" (teacher {sel['teacher_accuracy'] * 100:.2f}%, drop {sel['accuracy_drop'] * 100:.2f} points on the "
            f"lower figure, allowed {sel['max_accuracy_drop'] * 100:.2f}); macro-F1 {sel['macro_f1'] * 100:.2f}%",
            f"- batch-1 p50 {sel['batch1_p50_ms']:.3f} ms: {sel['speedup_vs_teacher_batch1_p50']:.1f}x faster than "
            f"{TEACHER}" + (f", {sel['speedup_vs_onestep_batch1_p50']:.1f}x faster than the one-step baseline "
                            f"{ONESTEP}" if "speedup_vs_onestep_batch1_p50" in sel else ""),
            f"- {_mb(sel['size_bytes'])} MB on disk ({sel['size_ratio_vs_teacher']:.1f}x smaller than the teacher's "
            f"fp32 safetensors), {_mb(sel['zip_bytes'])} MB zipped",
        ]  # fmt: skip
    else:
        out += [f"**No engine selected.** {failure}"]
    rows, skipped = variant_rows(bench)
    out += [
        "",
        "## Every variant",
        "",
        f"Latency in ms; speedup = {TEACHER} p50 / variant p50 (in brackets: its range over the rounds); "
        "size = every file the engine ships (model and "
        "tokenizer), zip = the same files DEFLATE-compressed; peak RSS in MiB (fresh process per variant). "
        "Accuracy: one sentence per call, as a server runs the engine; padded: in length-grouped batches of "
        f"{s.get('eval_batch_size', '?')} padded to the longest; agree: the share of test rows predicted alike both "
        "ways (dynamic int8 scales activations over the whole batch, so its predictions can move with the batch).",
        "",
        f"| variant | runtime | precision | accuracy % | padded % | agree % | macro-F1 % | b1 p50 | b1 p95 "
        f"| b{s['large_batch']} p50 | b{s['large_batch']} p95 | speedup b1 | speedup b{s['large_batch']} | size MB "
        "| zip MB | params M | peak RSS |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    if skipped:
        out += ["", "Not measured (skipped):", "", *skipped]
    front = [p["variant"] for p in points if p["frontier"]]
    out += ["", "## Accuracy vs latency", "", f"![accuracy vs batch-1 latency]({pareto_png})", "",
            f"Pareto frontier (no variant is both faster and more accurate): {', '.join(front)}."]  # fmt: skip
    if groups:
        out += _groups_table(groups, final_model)
    if entropy:
        out += _entropy_table(entropy, final_model)
    out += [
        "",
        "## Notes",
        "",
        "- Unstructured (dynamic) sparsity leaves dense matrices: it shows in the zip size, not in latency. "
        "Structured pruning and distillation are what make an engine faster.",
        f"- {large} throughput and every p99 are in `benchmark.json`, with the per-round p50s that show how stable "
        "each ratio was within the run.",
        f"- Peak RSS: {s.get('rss_method') or 'not measured'}.",
        "",
    ]
    return "\n".join(out)


def _groups_table(groups: dict[str, dict[str, int]], final_model: str | None) -> list[str]:
    names = list(groups)
    out = ["", "## Parameters by part", "", f"Final model: `{final_model}`." if final_model else "", "",
           "| part | " + " | ".join(names) + (" | final / teacher |" if len(names) == 2 else " |"),
           "|---|" + "---:|" * (len(names) + (1 if len(names) == 2 else 0))]  # fmt: skip
    for part in groups[names[0]]:
        vals = [groups[n][part] for n in names]
        if not any(vals):
            continue
        ratio = f" | {vals[1] / vals[0]:.3f}" if len(names) == 2 and vals[0] else (" | –" if len(names) == 2 else "")
        out.append(f"| {part} | " + " | ".join(f"{v:,}" for v in vals) + ratio + " |")
    return out


def _entropy_table(entropy: dict[str, Any], final_model: str | None) -> list[str]:
    width = max(max(layer["head_ids"], default=-1) for layer in entropy["layers"]) + 1
    out = ["", "## Attention entropy per head (final model)", "",
           f"Mean normalised entropy of each head's attention over {entropy['rows']} validation sentences "
           f"({entropy['batches']} batches): 0 = attends to a single token, 1 = uniform. '–' = head pruned.", "",
           "| layer | " + " | ".join(f"h{h}" for h in range(width)) + " |", "|---|" + "---:|" * width]  # fmt: skip
    for layer in entropy["layers"]:
        cells = ["–"] * width
        for h, e in zip(layer["head_ids"], layer["entropy"], strict=True):
            cells[h] = f"{e:.2f}"
        out.append(f"| {layer['layer']} | " + " | ".join(cells) + " |")
    return out


def make_report(
    cfg: ReportConfig,
    bench: dict[str, Any],
    report_md: str | Path,
    pareto_png: str | Path,
    pareto_data: str | Path,
    best_dir: str | Path,
    teacher_dir: str | Path | None = None,
    final_model: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Select, copy the engine to ``best_dir``; write the report, the Pareto plot and its data (for ``dvc plots``).

    ``final_model`` defaults to the model directory the selected engine was built from.
    Returns the selection record. With no qualifying engine, the report (saying so) and the plot
    are still written, then NoEngineQualifies is raised.
    """
    report_md, pareto_png = Path(report_md), Path(pareto_png)
    points = pareto_points(bench)
    selection, failure = None, None
    try:
        selection = select_engine(bench, cfg.select)
    except NoEngineQualifies as e:
        failure = str(e)
    teacher = bench["variants"].get(TEACHER, {})
    budget = budget_accuracy(teacher) - cfg.select.max_accuracy_drop if "accuracy" in teacher else None
    with atomic_file(pareto_data) as f:
        json.dump([{k: p[k] for k in ("variant", "role", "latency_ms", "accuracy", "frontier")} for p in points], f, indent=2)
    plot_pareto(points, pareto_png, budget, selection["variant"] if selection else None)
    if selection:
        copy_engine(selection["source_dir"], best_dir)
        selection["copied_to"] = str(best_dir)
        if final_model is None:
            final_model = source_model_dir(read_manifest(selection["source_dir"]))
    groups = entropy = None
    if final_model is not None:
        groups = {"teacher": parameter_groups(teacher_dir)} if teacher_dir else {}
        groups["final"] = parameter_groups(final_model)
        if cfg.entropy_batches and data_dir is not None:
            entropy = attention_entropy(final_model, data_dir, cfg)
        if selection:
            selection["final_model"] = str(final_model)
            selection["final_model_parameters"] = groups["final"]
    png = os.path.relpath(pareto_png.resolve(), report_md.resolve().parent)
    text = render_report(bench, selection, failure, points, png, groups, entropy, str(final_model) if final_model else None)
    with atomic_file(report_md) as f:
        f.write(text)
    if failure:
        raise NoEngineQualifies(failure)
    assert selection is not None
    return selection


# ------------------------------------------------------------------------------ across experiments


def experiment_points(exp_show: list[dict[str, Any]], metrics_file: str, include_baselines: bool = False) -> list[dict[str, Any]]:
    """Every measured variant of every experiment in ``dvc exp show --json`` output, as Pareto points.

    ``variant`` is ``<experiment>:<variant>``; ``speedup`` (vs the teacher in the same run) is
    the figure to compare across runs made at different times or on different machines.
    """

    def walk(states: list[dict[str, Any]]):
        for st in states or []:
            yield st
            for rng in st.get("experiments") or []:
                yield from walk(rng.get("revs") or [])

    runs: dict[str, tuple[str, dict[str, Any]]] = {}  # one entry per distinct result: the workspace often repeats an experiment
    for st in walk(exp_show):
        result = (((st.get("data") or {}).get("metrics") or {}).get(metrics_file) or {}).get("data") or {}
        rev = str(st.get("rev", "?"))
        name = st.get("name") or (rev if rev == "workspace" else rev[:7])
        key = json.dumps(result, sort_keys=True)
        if result and (key not in runs or runs[key][0] == "workspace"):
            runs[key] = (name, result)
    points = []
    for name, result in runs.values():
        for variant, v in (result.get("variants") or {}).items():
            if v.get("status") != "ok" or "latency" not in v or (v.get("role") == "baseline" and not include_baselines):
                continue
            points.append({"variant": f"{name}:{variant}", "role": v.get("role", "candidate"),
                           "latency_ms": latency_of(v), "accuracy": float(v["accuracy"]),
                           "speedup": v.get("speedup_vs_teacher", {}).get("batch_1", {}).get("p50")})  # fmt: skip
    front = pareto_frontier([(p["variant"], p["latency_ms"], p["accuracy"]) for p in points])
    for p in points:
        p["frontier"] = p["variant"] in front
    return sorted(points, key=lambda p: (p["latency_ms"], -p["accuracy"]))


def frontier_table(points: list[dict[str, Any]]) -> str:
    """A plain-text table of the points, fastest first, frontier marked with ``*``."""
    if not points:
        return "no experiment has benchmark results (run `dvc exp run` first)"
    width = max(len(p["variant"]) for p in points)
    lines = [f"  {'experiment:variant':<{width}}  {'b1 p50 ms':>10}  {'accuracy':>8}  {'x teacher':>9}"]
    for p in points:
        sp = "" if p["speedup"] is None else f"{p['speedup']:.1f}"
        lines.append(f"{'*' if p['frontier'] else ' '} {p['variant']:<{width}}  {p['latency_ms']:>10.3f}  "
                     f"{p['accuracy'] * 100:>7.2f}%  {sp:>9}")  # fmt: skip
    lines.append("* = on the accuracy/latency frontier. Latencies come from separate runs: compare the speedups "
                 "(each vs the teacher in its own run) when runs were made under different load.")  # fmt: skip
    return "\n".join(lines)
