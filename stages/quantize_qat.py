"""DVC stage: quantization-aware fine-tuning with KD, then its int8 ONNX engine (params: quantize.qat, export)."""

import argparse

from slimformer.stage import EpochCurves, stage_main, torch_threads
from slimformer.config import load_section
from slimformer.io import write_json
from slimformer.qat import qat

parser = argparse.ArgumentParser(prog="quantize_qat.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--model", required=True, help="float model directory to fine-tune (the compressed model)")
parser.add_argument("--data", required=True, help="prepared data directory")
parser.add_argument("--teacher-logits", default=None, help="cached teacher logits (used when quantize.qat.kd_source=teacher)")
parser.add_argument("--out", required=True, help="model directory to write (fp32 weights + learned ranges)")
parser.add_argument("--engine", required=True, help="int8 ONNX engine directory to write")
parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints (kept to resume)")
parser.add_argument("--live", required=True, help="dvclive directory for the training curves")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("quantize", args.params).qat
    export_cfg = load_section("export", args.params)
    torch_threads(cfg.train.num_threads)
    log = EpochCurves(args.live)

    metrics = qat(args.model, args.data, cfg, export_cfg, args.out, args.engine, args.checkpoints,
                  teacher_logits=args.teacher_logits, on_epoch=log)  # fmt: skip
    log.end()
    write_json(args.metrics, metrics)
    print(f"quantize_qat: int8 test accuracy {metrics['qat_int8']['test_accuracy']:.4f}, "
          f"PTQ static {metrics['ptq_static_int8']['test_accuracy']:.4f}, float {metrics['float_before']['test_accuracy']:.4f}")  # fmt: skip


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
