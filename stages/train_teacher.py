"""DVC stage: fine-tune the pretrained teacher as a sequence classifier (params: teacher)."""

import argparse
import sys

from slimformer import distributed
from slimformer.stage import EpochCurves, stage_main, torch_threads
from slimformer.config import load_section
from slimformer.io import write_json
from slimformer.teacher import finetune
from slimformer.training import world

parser = argparse.ArgumentParser(prog="train_teacher.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--data", required=True, help="prepared data directory")
parser.add_argument("--out", required=True, help="model directory to write")
parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints (kept to resume)")
parser.add_argument("--live", required=True, help="dvclive directory for the training curves")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("teacher", args.params)
    code = distributed.launch_if_needed(cfg.train.nproc)
    if code is not None:
        sys.exit(code)
    torch_threads(cfg.train.num_threads)
    distributed.init()
    log = EpochCurves(args.live)

    metrics = finetune(cfg, args.data, args.out, args.checkpoints, on_epoch=log)
    if world()[0] == 0:
        log.end()
        write_json(args.metrics, metrics)
        print(f"teacher: test accuracy {metrics['test_accuracy']:.4f}, macro-F1 {metrics['test_macro_f1']:.4f}")
    distributed.shutdown()


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
