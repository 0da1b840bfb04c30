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


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def main() -> None:
    """The ``slimformer`` command (helpers around DVC; the pipeline itself is ``dvc repro``)."""
    print("slimformer: run the pipeline with `dvc repro`; see README.md", file=sys.stderr)
    sys.exit(0)
