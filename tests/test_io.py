import json
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
