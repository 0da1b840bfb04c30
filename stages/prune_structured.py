"""DVC stage: remove the least important heads and FFN neurons, then recover with KD (params: prune_structured)."""

import argparse
import sys

from slimformer import distributed
from slimformer.stage import EpochCurves, stage_main, torch_threads
from slimformer.config import load_section
from slimformer.io import write_json
from slimformer.prune import prune_structured
from slimformer.training import world

parser = argparse.ArgumentParser(prog="prune_structured.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--student", required=True, help="student model directory (distill stage)")
parser.add_argument("--data", required=True, help="prepared data directory")
parser.add_argument("--logits", required=True, help="cached teacher logits (teacher_logits stage)")
parser.add_argument("--out", required=True, help="pruned model directory to write")
parser.add_argument("--plan", required=True, help="prune plan JSON to write")
parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints (kept to resume)")
parser.add_argument("--live", required=True, help="dvclive directory for the recovery curves")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("prune_structured", args.params)
    code = distributed.launch_if_needed(cfg.train.nproc)
    if code is not None:
        sys.exit(code)
    torch_threads(cfg.train.num_threads)
    distributed.init()
    log = EpochCurves(args.live)

    metrics = prune_structured(
        cfg, args.student, args.data, args.logits, args.out, args.plan, args.checkpoints, on_epoch=log
    )
    if world()[0] == 0:
        log.end()
        write_json(args.metrics, metrics)
        r, lat = metrics["removed"], metrics["latency_batch32"]
        print(
            f"prune_structured: removed {r['heads']} heads ({r['heads_fraction']:.0%}) and {r['neurons']} FFN neurons "
            f"({r['neurons_fraction']:.0%}); test accuracy {metrics['before']['test_accuracy']:.4f} -> "
            f"{metrics['after']['test_accuracy']:.4f}; batch-32 latency x{lat['latency_ratio']:.2f}, "
            f"FLOPs x{lat['flops_ratio']:.2f}"
        )
    distributed.shutdown()


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
