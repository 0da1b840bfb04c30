"""The report: every variant side by side, the accuracy/latency frontier, the selected engine's anatomy.

Renders and plots only. Which engine is selected is :mod:`slimformer.selection`; copying it to
``best/`` is :mod:`slimformer.engines.deploy`; the attention anatomy is :mod:`slimformer.attention`.
The report stage script runs them in that order and hands the results here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from slimformer.baselines import ONESTEP, TEACHER
from slimformer.config import ReportConfig
from slimformer.io import atomic_file
from slimformer.measure import safetensors_shapes
from slimformer.selection import NoEngineQualifies, budget_accuracy, latency_of, pareto_frontier, pareto_points

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
    selection: dict[str, Any] | None,
    failure: str | None,
    report_md: str | Path,
    pareto_png: str | Path,
    pareto_data: str | Path,
    teacher_dir: str | Path | None = None,
    final_model: str | Path | None = None,
    entropy: dict[str, Any] | None = None,
) -> None:
    """Write the report, the Pareto plot and its data (for ``dvc plots``) for a :func:`choose` result.

    ``final_model`` (the model directory the selected engine was built from) is dissected by
    parameter group; ``entropy`` is its attention anatomy (:func:`slimformer.attention.attention_entropy`).
    The selection record gains ``final_model`` and its parameter groups. With no qualifying
    engine, the report (saying so) and the plot are still written, then NoEngineQualifies is raised.
    """
    report_md, pareto_png = Path(report_md), Path(pareto_png)
    points = pareto_points(bench)
    teacher = bench["variants"].get(TEACHER, {})
    budget = budget_accuracy(teacher) - cfg.select.max_accuracy_drop if "accuracy" in teacher else None
    with atomic_file(pareto_data) as f:
        json.dump([{k: p[k] for k in ("variant", "role", "latency_ms", "accuracy", "frontier")} for p in points], f, indent=2)
    plot_pareto(points, pareto_png, budget, selection["variant"] if selection else None)
    groups = None
    if final_model is not None:
        groups = {"teacher": parameter_groups(teacher_dir)} if teacher_dir else {}
        groups["final"] = parameter_groups(final_model)
        if selection:
            selection["final_model"] = str(final_model)
            selection["final_model_parameters"] = groups["final"]
    png = os.path.relpath(pareto_png.resolve(), report_md.resolve().parent)
    text = render_report(bench, selection, failure, points, png, groups, entropy, str(final_model) if final_model else None)
    with atomic_file(report_md) as f:
        f.write(text)
    if failure:
        raise NoEngineQualifies(failure)


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
