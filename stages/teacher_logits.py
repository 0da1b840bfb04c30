"""DVC stage: run the teacher once over every split and cache its logits (params: distill.train.max_length, distill.augment)."""

import argparse

from slimformer.stage import stage_main, torch_threads
from slimformer.config import load_section
from slimformer.logit_cache import cache_teacher_logits
from slimformer.io import write_json

parser = argparse.ArgumentParser(prog="teacher_logits.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--teacher", required=True, help="fine-tuned teacher model directory")
parser.add_argument("--data", required=True, help="prepared data directory")
parser.add_argument("--out", required=True, help="safetensors file of logits to write")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("distill", args.params)
    torch_threads(cfg.train.num_threads)
    report = cache_teacher_logits(
        args.teacher, args.data, cfg.train.max_length, cfg.train.eval_batch_size, args.out, cfg.augment
    )
    write_json(args.metrics, report)
    print(
        f"teacher_logits: {report['rows']} rows in {report['seconds']} s, "
        f"teacher test accuracy {report['teacher_test_accuracy']:.4f}"
    )


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
