"""DVC stage: int8 engines from an fp32 ONNX engine with ONNX Runtime PTQ (params: quantize.ptq, export).

The source is the plain fp32 ONNX engine (dvc.yaml's quantize_ptq asks for all three engines) or ORT's
fused graph (quantize_ptq_fused asks for the dynamic one, where Attention becomes QAttention).
"""

import argparse
from pathlib import Path

from slimformer.stage import stage_main
from slimformer.config import load_section
from slimformer.io import write_json
from slimformer.quantize import ptq

parser = argparse.ArgumentParser(prog="quantize_ptq.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--source", required=True, help="fp32 ONNX engine directory (plain or ORT-fused)")
parser.add_argument("--data", required=True, help="prepared data directory (train: calibration, val: accuracy)")
parser.add_argument("--out-dynamic", help="engine directory: dynamic int8 (its name is the variant)")
parser.add_argument("--out-static", help="engine directory: static int8, QOperator (CPU)")
parser.add_argument("--out-static-qdq", help="engine directory: static int8, QDQ (TensorRT)")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    given = {"dynamic": args.out_dynamic, "static": args.out_static, "static_qdq": args.out_static_qdq}
    outs = {kind: Path(path) for kind, path in given.items() if path}
    if not outs:
        parser.error("name at least one of --out-dynamic, --out-static, --out-static-qdq")
    cfg = load_section("quantize", args.params).ptq
    export_cfg = load_section("export", args.params)
    metrics = ptq(args.source, args.data, cfg, export_cfg, outs)
    write_json(args.metrics, metrics)
    fp32 = metrics["fp32"]["test_accuracy"]
    for kind in outs:
        m = metrics[kind]
        if m["status"] == "ok":
            print(f"quantize_ptq: {outs[kind].name}: test accuracy {m['test_accuracy']:.4f} (fp32 {fp32:.4f}), "
                  f"{m['size_ratio']:.0%} of the fp32 size, {m['excluded_nodes']} MatMuls with float activations")  # fmt: skip


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
