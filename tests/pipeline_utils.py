"""Run the real DVC pipeline in a temporary copy of this repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def repo_files() -> list[str]:
    """Files git tracks plus new files it does not ignore (so uncommitted work is tested too)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [f for f in out.split("\0") if f and (REPO / f).is_file() and not f.startswith("artifacts/")] + [
        "artifacts/README.md"
    ]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["HF_HUB_OFFLINE"] = e["TRANSFORMERS_OFFLINE"] = "1"
    e["DVC_NO_ANALYTICS"] = "1"
    e["GIT_AUTHOR_NAME"] = e["GIT_COMMITTER_NAME"] = "slimformer-test"
    e["GIT_AUTHOR_EMAIL"] = e["GIT_COMMITTER_EMAIL"] = "test@localhost"
    return e


def copy_repo(dest: Path, overrides: dict) -> Path:
    """A git repository at ``dest`` with this project's files and tiny params."""
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, overrides), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "test copy"], dest)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    e = env()
    e["PYTHONPATH"] = str(cwd / "src")  # the copy's own code, not the editable install's
    e.update(extra_env or {})
    proc = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def completed_epoch(ckpt_dir: Path) -> int:
    """The last epoch a training stage checkpointed in ``ckpt_dir`` (0: none yet)."""
    try:
        return json.loads((ckpt_dir / "state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def wait_for_epoch(proc: subprocess.Popen, ckpt_dir: Path, epoch: int, timeout: float = 300, log: Path | None = None) -> None:
    """Block until ``epoch`` epochs are checkpointed, asserting ``proc`` is still running then
    (the tail of ``log``, if given, goes into the failure message)."""
    deadline = time.monotonic() + timeout
    while completed_epoch(ckpt_dir) < epoch and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    tail = log.read_text()[-2000:] if log else ""
    assert proc.poll() is None, f"the stage finished or failed before epoch {epoch} was checkpointed\n{tail}"
