"""DVC stage: validate the whole of params.yaml before any other stage runs (params: all).

Every other stage reads only its own section, and DVC reruns a stage only when that
section changes, so a misspelled section name (``becnhmark:``) or a key no stage tracks
would otherwise be ignored without a word. This stage tracks every param in the file;
``prepare`` depends on its out, so a bad key stops ``dvc repro`` before any stage clears
its outputs or starts work. The out only lists the checked sections: it stays the same
when values change, and so never reruns anything downstream by itself; it is a persist
out, so a failed check leaves the last good one in place. It also checks the teacher
checkpoint (its model family, its safetensors, its head against ``data.labels``) without
loading any weights, so an unsupported model fails here, in seconds, not after training.
"""

import argparse
from pathlib import Path

from slimformer.stage import stage_main
from slimformer.config import load_all
from slimformer.families import check_checkpoint
from slimformer.io import write_json

parser = argparse.ArgumentParser(prog="check_params.py", description=__doc__.splitlines()[0])
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--out", required=True, help="JSON file naming the sections that passed")


def run(args: argparse.Namespace) -> None:
    sections = load_all(args.params)
    teacher = sections["teacher"]
    check_checkpoint(teacher.checkpoint, sections["data"].labels, trained_head=teacher.train.epochs == 0)
    write_json(args.out, {"params": Path(args.params).name, "sections": sorted(sections)})
    print(f"check_params: {args.params}: {len(sections)} sections valid ({', '.join(sections)})")


main = stage_main(run, parser)

if __name__ == "__main__":
    main()
