"""DVC stage: read the corpus, check it, dedupe it and split it (params: data)."""

import argparse
import json

from slimformer.stage import stage_main
from slimformer.config import load_section
from slimformer.data import prepare

parser = argparse.ArgumentParser(prog="prepare.py", description=__doc__)
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--out", required=True, help="directory for {train,val,test}.jsonl and card.json")


def run(args: argparse.Namespace) -> None:
    cfg = load_section("data", args.params)
    card = prepare(cfg, args.out)
    print(json.dumps(card["splits"], indent=2))


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
