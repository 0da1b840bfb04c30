"""DVC stage: measure every engine, the PyTorch teacher and the one-step int8 baseline alike (params: benchmark)."""

import argparse

from slimformer.benchmark import TEACHER, benchmark
from slimformer.stage import stage_main, torch_threads
from slimformer.config import load_section
from slimformer.io import write_json

parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--engines", required=True, help="directory holding one engine directory per variant")
parser.add_argument("--teacher", required=True, help="fine-tuned teacher model directory (the PyTorch baseline)")
parser.add_argument("--data", required=True, help="prepared data directory (test.jsonl, card.json)")
parser.add_argument("--onestep", required=True, help="the one-step int8 baseline engine directory (built by the onestep_baseline stage)")
parser.add_argument("--out", required=True, help="benchmark JSON to write (metrics)")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("benchmark", args.params)
    torch_threads(cfg.num_threads)
    result = benchmark(cfg, args.engines, args.teacher, args.data, args.onestep if cfg.onestep != "none" else None)
    write_json(args.out, result)
    measured = [n for n, v in result["variants"].items() if v["status"] == "ok"]
    teacher_p50 = result["variants"][TEACHER]["latency"]["batch_1"]["p50_ms"]
    print(f"benchmark: {len(measured)} variants measured, {len(result['variants']) - len(measured)} skipped; "
          f"{TEACHER} batch-1 p50 {teacher_p50:.2f} ms; {result['wall_seconds']:.0f} s")  # fmt: skip


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
