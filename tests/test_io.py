import json
import os
import stat
from pathlib import Path

import pytest

from slimformer.io import atomic_dir, atomic_file, sha256_file, write_json


def test_atomic_dir_swaps_in_only_when_complete(tmp_path: Path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("v2-partial")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path: Path):
    out = tmp_path / "model"
    (tmp_path / ".model.abc123.tmp").mkdir()  # what SIGKILL leaves behind
    (tmp_path / ".model.old").mkdir()  # killed between the two renames, no new copy in place
    (tmp_path / ".model.old" / "a").write_text("last good")
    with atomic_dir(out) as tmp:
        assert (out / "a").read_text() == "last good"  # restored before the new write starts
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (out / "a").read_text() == "new"


def test_atomic_file_and_json(tmp_path: Path):
    p = tmp_path / "m.json"
    write_json(p, {"x": 1})
    with pytest.raises(ValueError):
        with atomic_file(p) as f:
            f.write("{broken")
            raise ValueError
    assert json.loads(p.read_text()) == {"x": 1}
    assert len(sha256_file(p)) == 64 and [x.name for x in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_respect_the_umask(tmp_path: Path, umask: int):
    """mkstemp/mkdtemp create 0600/0700; what lands in place has the modes open()/mkdir() would give."""
    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "engine") as tmp:
            (tmp / "f").write_text("x")
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "engine").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "engine" / "f").stat().st_mode) == 0o666 & ~umask


def test_atomic_dir_fsyncs_every_file_before_the_rename(tmp_path: Path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {b}"), real_replace(a, b))[1])
    with atomic_dir(tmp_path / "engine") as tmp:
        (tmp / "a.bin").write_bytes(b"1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"2")
    rename = events.index(f"replace {tmp_path / 'engine'}")
    synced = [e for e in events[:rename] if e.startswith("fsync")]
    assert any(e.endswith("/a.bin") for e in synced) and any(e.endswith("/sub/b.bin") for e in synced)
