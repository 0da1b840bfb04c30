"""dvc.yaml's wiring, read through DVC itself (foreach stages expanded)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {s.addressing: s for s in repo.index.stages}


def _paths(items) -> set[str]:
    return {str(i.def_path) for i in items}


def test_every_engine_is_benchmarked_and_selectable(stages):
    """An engine a stage writes but the benchmark or report does not depend on would be measured stale or not at all."""
    engines = {p for name, s in stages.items() if name != "report" for p in _paths(s.outs) if p.startswith("artifacts/engines/")}
    assert {"artifacts/engines/ptq_dynamic_int8_ortopt", "artifacts/engines/tensorrt_int8"} <= engines
    for consumer in ("benchmark", "report"):
        missing = engines - _paths(stages[consumer].deps)
        assert not missing, f"{consumer} does not depend on {sorted(missing)}"


def test_engine_outputs_are_cached_and_metrics_are_not(stages):
    metrics = {p for s in stages.values() for p in _paths(s.outs) if p.startswith("artifacts/metrics/")}
    assert "artifacts/metrics/quantize_ptq_fused.json" in metrics and "artifacts/metrics/benchmark.json" in metrics
    for name, s in stages.items():
        for out in s.outs:
            path = str(out.def_path)
            if path.startswith(("artifacts/engines/", "artifacts/models/", "artifacts/data")):
                assert out.use_cache, f"{name}: {path} must be a cached DVC output (never a git blob)"
            if path.startswith("artifacts/metrics/"):  # small JSON kept in git, so `dvc metrics diff` reads any revision
                assert not out.use_cache, f"{name}: {path} must not be cached"
