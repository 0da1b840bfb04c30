"""Entry-point plumbing shared by the stage scripts: clear errors, no tracebacks for user mistakes."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from slimformer.errors import SlimformerError


def stage_main(fn: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> Callable[[], None]:
    """Wrap a stage's ``main``: user errors print one line and exit 2; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def main() -> None:
        args = parser.parse_args()
        name = parser.prog.removesuffix(".py")
        try:
            fn(args)
        except SlimformerError as e:
            print(f"slimformer {name}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"slimformer {name}: interrupted; previous outputs are untouched", file=sys.stderr)
            sys.exit(130)

    return main


class EpochCurves:
    """Per-epoch training curves through dvclive, for ``fit(on_epoch=...)``.

    dvclive only writes the curves: ``dvc.yaml`` declares them as plots and experiments are
    DVC's job, so ``Live`` gets ``dvcyaml=None, save_dvc_exp=False``. The first logged epoch
    decides whether the curves start fresh (epoch 1) or continue a resumed run.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.live = None

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.live is None:
            from dvclive import Live  # noqa: PLC0415 - only training stages need it

            self.live = Live(self.directory, resume=epoch > 1, dvcyaml=None, save_dvc_exp=False)
        self.live.step = epoch
        for k, v in metrics.items():
            if k != "epoch":
                self.live.log_metric(k, v)
        self.live.next_step()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


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
