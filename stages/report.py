"""DVC stage: the report, the accuracy/latency frontier, and the engine to deploy (params: report)."""

import argparse
import json
from pathlib import Path

from slimformer.config import load_section
from slimformer.engines import read_manifest
from slimformer.engines.deploy import copy_engine
from slimformer.errors import DataError
from slimformer.io import write_json
from slimformer.report import make_report
from slimformer.selection import choose
from slimformer.stage import stage_main, torch_threads
from slimformer.variants import source_model_dir

parser = argparse.ArgumentParser(prog="report.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--benchmark", required=True, help="benchmark JSON (benchmark stage)")
parser.add_argument("--teacher", required=True, help="teacher model directory (parameter breakdown)")
parser.add_argument("--data", required=True, help="prepared data directory (validation batches for attention entropy)")
parser.add_argument("--final-model", default=None, help="model directory to dissect; default: the selected engine's source")
parser.add_argument("--report", required=True, help="report.md to write")
parser.add_argument("--pareto-png", required=True, help="accuracy-vs-latency plot to write")
parser.add_argument("--pareto-data", required=True, help="the plot's data, for dvc plots (JSON list)")
parser.add_argument("--best", required=True, help="directory to copy the selected engine into")
parser.add_argument("--selection", required=True, help="selection JSON to write (metrics)")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("report", args.params)
    torch_threads(1)  # only the attention-entropy pass runs a model, on a few batches
    try:
        bench = json.loads(Path(args.benchmark).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{args.benchmark}: cannot read the benchmark results ({e}); rerun the benchmark stage") from None
    selection, failure = choose(bench, cfg.select)
    final_model = args.final_model
    if selection:
        copy_engine(selection["source_dir"], args.best)
        selection["copied_to"] = args.best
        final_model = final_model or source_model_dir(read_manifest(selection["source_dir"]))
    entropy = None
    if final_model is not None and cfg.entropy_batches:
        from slimformer.attention import attention_entropy  # noqa: PLC0415 - torch only where a model runs

        entropy = attention_entropy(final_model, args.data, cfg)
    make_report(cfg, bench, selection, failure, args.report, args.pareto_png, args.pareto_data, args.teacher, final_model, entropy)
    assert selection is not None  # make_report raised NoEngineQualifies otherwise
    write_json(args.selection, selection)
    print(f"report: selected {selection['variant']}: accuracy {selection['accuracy']:.4f} "
          f"(teacher {selection['teacher_accuracy']:.4f}), batch-1 p50 {selection['batch1_p50_ms']:.3f} ms, "
          f"x{selection['speedup_vs_teacher_batch1_p50']:.1f} vs teacher -> {args.best}")  # fmt: skip


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
