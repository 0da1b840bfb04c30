"""DVC stage: build the one-step int8 baseline of the teacher (optimum export + dynamic int8; params: benchmark.onestep)."""

import argparse

from slimformer.baselines import build_onestep_baseline
from slimformer.config import load_section
from slimformer.stage import stage_main, torch_threads

parser = argparse.ArgumentParser(prog="onestep_baseline.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--teacher", required=True, help="fine-tuned teacher model directory")
parser.add_argument("--out", required=True, help="engine directory to write the baseline into")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("benchmark", args.params)
    torch_threads(cfg.num_threads)  # as when the benchmark stage built it
    m = build_onestep_baseline(args.teacher, args.out, cfg.onestep)
    if m["status"] == "ok":
        print(f"onestep_baseline: built with {m['tool']} in {m['build_seconds']} s -> {args.out}")
    else:
        print(f"onestep_baseline: skipped ({m['reason']})")


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
