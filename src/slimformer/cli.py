"""The ``slimformer`` command: helpers around the DVC pipeline (the pipeline itself is ``dvc repro``)."""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    """The ``slimformer`` command (helpers around DVC; the pipeline itself is ``dvc repro``).

    ``slimformer frontier`` reads ``dvc exp show --json`` and prints (and with ``--plot``, draws)
    the accuracy-vs-latency frontier over every variant of every experiment.
    """
    import json  # noqa: PLC0415 - keep the stage scripts' import of this module light
    import subprocess  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="slimformer", description="helpers around the slimformer DVC pipeline")
    sub = parser.add_subparsers(dest="command")
    front = sub.add_parser("frontier", help="accuracy vs batch-1 latency across DVC experiments")
    front.add_argument("--metrics", default="artifacts/metrics/benchmark.json", help="benchmark metrics file in dvc.yaml")
    front.add_argument("--plot", default=None, help="also write the frontier as a PNG here")
    front.add_argument("--include-baselines", action="store_true", help="also show the teacher and one-step baselines")
    args = parser.parse_args()
    if args.command != "frontier":
        print("slimformer: run the pipeline with `dvc repro`; see README.md (subcommands: frontier)", file=sys.stderr)
        sys.exit(0)
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        print("slimformer frontier: error: dvc not found on PATH", file=sys.stderr)
        sys.exit(2)
    if proc.returncode != 0:
        print(f"slimformer frontier: error: dvc exp show failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        sys.exit(2)
    from slimformer.report import experiment_points, frontier_table, plot_pareto  # noqa: PLC0415

    points = experiment_points(json.loads(proc.stdout or "[]"), args.metrics, args.include_baselines)
    print(frontier_table(points))
    if args.plot and points:
        plot_pareto(points, args.plot, budget=None, selected=None)
        print(f"frontier plot: {args.plot}")
    sys.exit(0)
