"""DVC stage: distil the teacher into a compound-scaled, vocabulary-trimmed student (params: distill)."""

import argparse
import sys

from slimformer import distributed
from slimformer.stage import EpochCurves, stage_main, torch_threads
from slimformer.config import load_section
from slimformer.distill import distill
from slimformer.io import write_json
from slimformer.training import world

parser = argparse.ArgumentParser(prog="distill.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--teacher", required=True, help="fine-tuned teacher model directory")
parser.add_argument("--data", required=True, help="prepared data directory")
parser.add_argument("--logits", required=True, help="cached teacher logits (teacher_logits stage)")
parser.add_argument("--out", required=True, help="student model directory to write")
parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints (kept to resume)")
parser.add_argument("--live", required=True, help="dvclive directory for the training curves")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("distill", args.params)
    code = distributed.launch_if_needed(cfg.train.nproc)
    if code is not None:
        sys.exit(code)
    torch_threads(cfg.train.num_threads)
    distributed.init()
    log = EpochCurves(args.live)

    metrics = distill(cfg, args.teacher, args.data, args.logits, args.out, args.checkpoints, on_epoch=log)
    if world()[0] == 0:
        log.end()
        write_json(args.metrics, metrics)
        print(
            f"distill: test accuracy {metrics['test_accuracy']:.4f} (teacher {metrics['teacher_test_accuracy']:.4f}), "
            f"{metrics['params']['total']:,} parameters, non-embedding {metrics['non_embedding_params_ratio']:.1%} "
            "of the teacher's"
        )
    distributed.shutdown()


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
