"""Entry-point plumbing shared by the stage scripts: clear errors, no tracebacks for user mistakes.

Stage scripts (``stages/*.py``) import this module, never :mod:`slimformer.cli` (the
``slimformer`` command), so a stage's DVC code dependencies are only what it really runs.
"""

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
