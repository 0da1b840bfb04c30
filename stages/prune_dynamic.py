"""DVC stage: gradual magnitude pruning during a KD fine-tune, masks made permanent (params: prune_dynamic)."""

import argparse
import sys

from slimformer import distributed
from slimformer.stage import EpochCurves, stage_main, torch_threads
from slimformer.config import load_section
from slimformer.io import write_json
from slimformer.prune import prune_dynamic
from slimformer.training import world

parser = argparse.ArgumentParser(prog="prune_dynamic.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--pruned", required=True, help="structurally pruned model directory")
parser.add_argument("--data", required=True, help="prepared data directory")
parser.add_argument("--logits", required=True, help="cached teacher logits (teacher_logits stage)")
parser.add_argument("--out", required=True, help="sparse model directory to write")
parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints (kept to resume)")
parser.add_argument("--live", required=True, help="dvclive directory for the fine-tuning curves")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("prune_dynamic", args.params)
    code = distributed.launch_if_needed(cfg.train.nproc)
    if code is not None:
        sys.exit(code)
    torch_threads(cfg.train.num_threads)
    distributed.init()
    log = EpochCurves(args.live)

    metrics = prune_dynamic(cfg, args.pruned, args.data, args.logits, args.out, args.checkpoints, on_epoch=log)
    if world()[0] == 0:
        log.end()
        write_json(args.metrics, metrics)
        s, size = metrics["sparsity"], metrics["size_after"]
        print(
            f"prune_dynamic: sparsity {s['overall']:.3f} (target {metrics['target_sparsity']}), test accuracy "
            f"{metrics['before']['test_accuracy']:.4f} -> {metrics['after']['test_accuracy']:.4f}, "
            f"zip {metrics['size_before']['zip_bytes']:,} -> {size['zip_bytes']:,} bytes"
        )
    distributed.shutdown()


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
