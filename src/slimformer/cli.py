"""The ``slimformer`` command: helpers around the DVC pipeline (the pipeline itself is ``dvc repro``),
and running an engine directory on its own (verify, predict, serve, loadtest).

Every import is inside its subcommand, so ``predict`` and ``serve`` on an ONNX engine load
neither torch nor dvc nor matplotlib (the light ``pip install '.[serve]'`` has none of them).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimformer", description="helpers around the slimformer DVC pipeline, and engines on their own")
    sub = parser.add_subparsers(dest="command")
    front = sub.add_parser("frontier", help="accuracy vs batch-1 latency across DVC experiments")
    front.add_argument("--metrics", default="artifacts/metrics/benchmark.json", help="benchmark metrics file in dvc.yaml")
    front.add_argument("--plot", default=None, help="also write the frontier as a PNG here")
    front.add_argument("--include-baselines", action="store_true", help="also show the teacher and one-step baselines")

    ver = sub.add_parser("verify", help="check an engine directory: exactly the files its manifest lists, each sha256 matching")
    ver.add_argument("engine_dir")

    pred = sub.add_parser("predict", help="classify texts with an engine; one JSON object per line")
    pred.add_argument("engine_dir")
    pred.add_argument("texts", nargs="*", help="texts to classify")
    pred.add_argument("--file", default=None, help="also classify each non-empty line of this file ('-': standard input)")
    pred.add_argument("--batch-size", type=int, default=1, help="texts per engine call (default 1: each alone, as served)")
    pred.add_argument("--threads", type=int, default=2, help="engine threads")
    pred.add_argument("--trust-torchscript", action="store_true", help="allow loading a TorchScript engine (it can run code)")

    srv = sub.add_parser("serve", help="serve an engine over HTTP: GET /health, POST /predict {\"inputs\": [...]}")
    srv.add_argument("engine_dir")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-batch", type=int, default=1, help="most texts in one engine call, joined across concurrent requests")
    srv.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body")
    srv.add_argument("--max-inputs", type=int, default=64, help="most texts in one request")
    srv.add_argument("--threads", type=int, default=2, help="engine threads")
    srv.add_argument("--trust-torchscript", action="store_true", help="allow loading a TorchScript engine (it can run code)")

    load = sub.add_parser("loadtest", help="POST one-text requests to a running `slimformer serve` from concurrent clients")
    load.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (/predict is added)")
    load.add_argument("--file", required=True, help="texts to send, one per line, in turn")
    load.add_argument("--concurrency", type=int, default=8)
    load.add_argument("--requests", type=int, default=1000)
    load.add_argument("--expect", default=None, help="`slimformer predict` output for these texts: count answers that differ")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``slimformer`` command."""
    args = build_parser().parse_args(argv)
    commands = {"frontier": frontier, "verify": verify, "predict": predict, "serve": serve, "loadtest": loadtest}
    if args.command not in commands:
        print("slimformer: run the pipeline with `dvc repro`; see README.md (subcommands: frontier, verify, predict, serve, loadtest)",
              file=sys.stderr)  # fmt: skip
        sys.exit(0)
    from slimformer.errors import SlimformerError  # noqa: PLC0415

    try:
        sys.exit(commands[args.command](args))
    except SlimformerError as e:
        print(f"slimformer {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def verify(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from slimformer.engines import verify_engine  # noqa: PLC0415

    m = verify_engine(Path(args.engine_dir))
    print(f"ok: {args.engine_dir}: {m['format']} {m['precision']} engine {m['variant']!r} ({m['status']}), "
          f"{len(m['files'])} files, each listed and matching its sha256")  # fmt: skip
    return 0


def _positive(name: str, value: int) -> None:
    if value < 1:
        from slimformer.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"{name} must be a positive integer, got {value}")


def predict(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from slimformer.errors import DataError  # noqa: PLC0415
    from slimformer.serving import Classifier, read_texts  # noqa: PLC0415

    _positive("--batch-size", args.batch_size)
    texts = list(args.texts) + (read_texts(args.file) if args.file else [])
    if not texts:
        raise DataError("no texts: give them as arguments or with --file")
    classifier = Classifier(args.engine_dir, args.threads, trust_torchscript=args.trust_torchscript)
    for text, pred in zip(texts, classifier.classify(texts, args.batch_size), strict=True):
        print(json.dumps({"text": text, "label": pred["label"], "score": pred["score"]}, ensure_ascii=False))
    return 0


def serve(args: argparse.Namespace) -> int:
    from slimformer.errors import ConfigError  # noqa: PLC0415
    from slimformer.serving import Classifier, ServeLimits  # noqa: PLC0415
    from slimformer.serving import serve as run_server  # noqa: PLC0415

    try:
        limits = ServeLimits(max_request_bytes=args.max_request_bytes, max_inputs=args.max_inputs, max_batch=args.max_batch)
    except ValueError as e:
        raise ConfigError(str(e).replace("max_", "--max-").replace("_", "-")) from None
    run_server(Classifier(args.engine_dir, args.threads, trust_torchscript=args.trust_torchscript), args.host, args.port, limits)
    return 0


def loadtest(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from slimformer.serving import load_test, read_expectations, read_texts  # noqa: PLC0415

    _positive("--concurrency", args.concurrency)
    _positive("--requests", args.requests)
    expect = read_expectations(args.expect) if args.expect else None
    result = load_test(args.url, read_texts(args.file), args.concurrency, args.requests, expect)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and result["mismatches"] == 0 else 1


def frontier(args: argparse.Namespace) -> int:
    """Read ``dvc exp show --json`` and print (and with ``--plot``, draw) the accuracy-vs-latency
    frontier over every variant of every experiment."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    try:
        from slimformer.report import experiment_points, frontier_table, plot_pareto  # noqa: PLC0415
    except ImportError as e:  # the light '.[serve]' install has no matplotlib and no dvc
        print(f"slimformer frontier: error: needs the pipeline install (pip install '.[pipeline]' or make setup): {e}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        print("slimformer frontier: error: dvc not found on PATH", file=sys.stderr)
        return 2
    if proc.returncode != 0:
        print(f"slimformer frontier: error: dvc exp show failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return 2
    points = experiment_points(json.loads(proc.stdout or "[]"), args.metrics, args.include_baselines)
    print(frontier_table(points))
    if args.plot and points:
        plot_pareto(points, args.plot, budget=None, selected=None)
        print(f"frontier plot: {args.plot}")
    return 0
