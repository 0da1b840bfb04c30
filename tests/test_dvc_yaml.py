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


def _script(stage) -> Path:
    """The ``stages/*.py`` script a stage's command runs."""
    words = stage.cmd.split()
    scripts = [w for w in words if w.startswith("stages/") and w.endswith(".py")]
    assert len(scripts) == 1, f"{stage.addressing}: expected one stages/*.py script in {stage.cmd!r}"
    return ROOT / scripts[0]


def test_code_deps_are_exactly_what_each_stage_imports(stages):
    """Every slimformer module a stage's script imports (transitively, lazy imports included) is a dep, and no other.

    A missing dep lets `dvc status` say "up to date" while the stage's outputs are stale (a
    change to the KD loss must rerun every stage that trains with it); an extra one reruns a
    stage for code it never runs.
    """
    from import_graph import slimformer_closure

    problems = []
    for name, s in stages.items():
        script = _script(s)
        code = {p for p in _paths(s.deps) if p.startswith("src/")}
        needed = slimformer_closure(script)
        if missing := sorted(needed - code):
            problems.append(f"{name}: dvc.yaml lacks deps {missing} ({script.name} imports them)")
        if extra := sorted(code - needed):
            problems.append(f"{name}: dvc.yaml deps {extra} are never imported by {script.name}")
        if script.relative_to(ROOT).as_posix() not in _paths(s.deps):
            problems.append(f"{name}: dvc.yaml lacks its own script {script.relative_to(ROOT).as_posix()}")
    assert not problems, "\n".join(problems)


def test_import_graph_follows_lazy_imports_and_packages(tmp_path):
    from import_graph import slimformer_closure

    script = tmp_path / "s.py"
    script.write_text("def f():\n    from slimformer.engines import tensorrt\n    import slimformer.io\n")
    got = slimformer_closure(script)
    assert {"src/slimformer/__init__.py", "src/slimformer/engines/__init__.py", "src/slimformer/engines/tensorrt.py", "src/slimformer/io.py"} <= got
    assert "src/slimformer/report.py" not in got


def test_every_stage_script_is_run_by_a_stage(stages):
    """No dead stage scripts: each stages/*.py is some stage's command."""
    used = {_script(s).name for s in stages.values()}
    assert sorted(p.name for p in (ROOT / "stages").glob("*.py")) == sorted(used)
