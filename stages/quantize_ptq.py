"""DVC stage: int8 engines from the fp32 ONNX engine with ONNX Runtime PTQ (params: quantize.ptq, export)."""

import argparse
from pathlib import Path

from slimformer.cli import stage_main
from slimformer.config import load_section
from slimformer.io import write_json
from slimformer.quantize import ptq

parser = argparse.ArgumentParser(prog="quantize_ptq.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--source", required=True, help="fp32 ONNX engine directory")
parser.add_argument("--data", required=True, help="prepared data directory (train: calibration, val: accuracy)")
parser.add_argument("--out-dynamic", required=True, help="engine directory: dynamic int8")
parser.add_argument("--out-static", required=True, help="engine directory: static int8, QOperator (CPU)")
parser.add_argument("--out-static-qdq", required=True, help="engine directory: static int8, QDQ (TensorRT)")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("quantize", args.params).ptq
    export_cfg = load_section("export", args.params)
    outs = {"dynamic": Path(args.out_dynamic), "static": Path(args.out_static), "static_qdq": Path(args.out_static_qdq)}
    metrics = ptq(args.source, args.data, cfg, export_cfg, outs)
    write_json(args.metrics, metrics)
    fp32 = metrics["fp32"]["test_accuracy"]
    for kind in outs:
        m = metrics[kind]
        if m["status"] == "ok":
            print(f"quantize_ptq: {kind}: test accuracy {m['test_accuracy']:.4f} (fp32 {fp32:.4f}), "
                  f"{m['size_ratio']:.0%} of the fp32 size, {m['excluded_nodes']} MatMuls with float activations")  # fmt: skip


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
