"""Scale-out: a stage relaunches itself under torchrun when params ask for several processes.

``dvc repro`` stays the one command: the stage script calls :func:`launch_if_needed`,
which re-executes the same script with ``torchrun --nproc_per_node N`` (gloo on CPU,
NCCL on GPU) and returns its exit code; inside the workers :func:`init` joins the group.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def launch_if_needed(nproc: int) -> int | None:
    """Run ``sys.argv`` under torchrun with ``nproc`` workers; None if already a worker or nproc == 1."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return None
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc_per_node={nproc}",
        *sys.argv,
    ]  # fmt: skip
    print(f"launching {nproc} DistributedDataParallel workers: {' '.join(cmd)}", file=sys.stderr)
    return subprocess.call(cmd)


def init() -> None:
    """Join the process group when started by torchrun (no-op otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
