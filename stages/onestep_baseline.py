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
    done = f"built with {m['tool']} in {m['build_seconds']} s" if m["status"] == "ok" else f"skipped ({m['reason']})"
    print(f"onestep_baseline: {m['variant']} {done} -> {args.out}")


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
