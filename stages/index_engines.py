"""DVC stage: the index of every engine directory under the engines root (no params)."""

import argparse

from slimformer.cli import stage_main
from slimformer.engines import index_engines
from slimformer.io import write_json

parser = argparse.ArgumentParser(prog="index_engines.py", description=__doc__)
parser.add_argument("--engines", required=True, help="engines root holding one directory per variant")
parser.add_argument("--out", required=True, help="index JSON to write")


def run(args: argparse.Namespace) -> None:
    index = index_engines(args.engines)
    write_json(args.out, {"engines": index})
    ok = sum(e["status"] == "ok" for e in index.values())
    print(f"index_engines: {ok} engines ready, {len(index) - ok} skipped")


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
