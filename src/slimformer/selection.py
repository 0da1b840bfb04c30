"""Which engine to deploy, and the accuracy/latency frontier it sits on.

Selection rule (``report.select``): among deployable engines (not the PyTorch teacher, not a
skipped engine, optionally restricted to some formats and precisions), the one with the lowest
batch-1 p50 latency whose test accuracy is at most ``max_accuracy_drop`` (absolute) below the
teacher's, both from the same benchmark run. The accuracy judged is the lower of the engine's two
figures: one sentence per call (as served) and in padded batches (:func:`budget_accuracy`), so the
selected engine holds the budget however it is fed; dynamic int8 predictions can move with the
batch (the benchmark reports both and their agreement). If none qualifies, :func:`select_engine`
raises and names the best accuracy reached and the budget; it never falls back silently.

The report stage copies the chosen engine directory to ``artifacts/engines/best/``
(:func:`slimformer.engines.deploy.copy_engine`, verified before and after the copy).
"""

from __future__ import annotations

from typing import Any

from slimformer.baselines import ONESTEP, TEACHER
from slimformer.config import SelectConfig
from slimformer.errors import SlimformerError

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


def choose(bench: dict[str, Any], cfg: SelectConfig) -> tuple[dict[str, Any] | None, str | None]:
    """``(selection, None)``, or ``(None, why)`` when no engine qualifies (the report still says so)."""
    try:
        return select_engine(bench, cfg), None
    except NoEngineQualifies as e:
        return None, str(e)
