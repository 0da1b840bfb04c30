"""DVC stage: build one engine directory from a model (or ONNX engine) directory (params: export)."""

import argparse
from pathlib import Path

from slimformer.engines import tensorrt
from slimformer.stage import stage_main, torch_threads
from slimformer.config import load_section
from slimformer.engines import engine_metrics
from slimformer.io import write_json

EXPORTERS = ("torchscript", "torchscript_int8", "onnx", "onnx_ortopt", *tensorrt.PRECISION_OF_EXPORTER)

parser = argparse.ArgumentParser(prog="export.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--exporter", required=True, choices=EXPORTERS, help="how to build the engine")
parser.add_argument("--source", required=True, help="model directory (torchscript*, onnx*) or ONNX engine directory (tensorrt_*)")
parser.add_argument("--data", required=True, help="prepared data directory (test batches for parity, val for agreement)")
parser.add_argument("--out", required=True, help="engine directory to write; its name is the variant")
parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("export", args.params)
    manifest = None
    if args.exporter in tensorrt.PRECISION_OF_EXPORTER:  # without TensorRT: a skipped engine, no torch import
        manifest = tensorrt.write_skipped(args.exporter, args.source, cfg.tensorrt, args.out)
    if manifest is None:
        from slimformer.export import build_engine  # noqa: PLC0415 - torch, transformers, onnx: seconds to import

        torch_threads(cfg.num_threads)
        manifest = build_engine(args.exporter, args.source, cfg, args.data, args.out)
    metrics = engine_metrics(manifest, Path(args.out))
    write_json(args.metrics, metrics)
    if manifest["status"] != "ok":
        print(f"export: {manifest['variant']} skipped: {manifest['reason']}")
    else:
        print(f"export: {manifest['variant']} ({metrics['engine_bytes'] / 1e6:.1f} MB) passed parity: {metrics}")


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
