"""Deploying an engine: copy a verified engine directory somewhere else, verified again where it lands."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from slimformer.engines.manifest import MANIFEST, safe_member, verify_engine
from slimformer.errors import CheckpointError
from slimformer.io import atomic_dir


def copy_engine(engine_dir: str | Path, best_dir: str | Path) -> dict[str, Any]:
    """Copy a verified engine directory (its manifest and every file it lists) to ``best_dir``; verify the copy.

    The copy is checked inside the temporary directory and again once in place; a mismatch
    raises CheckpointError and leaves any previous ``best_dir`` untouched.
    """
    engine_dir, best_dir = Path(engine_dir), Path(best_dir)
    manifest = verify_engine(engine_dir)  # refuses names that leave the directory, too
    with atomic_dir(best_dir) as tmp:
        for name in [*manifest["files"], MANIFEST]:
            # Checked again where the bytes go, so no name can write outside best/ whatever verify_engine allows.
            target = safe_member(tmp, name) if name != MANIFEST else tmp / MANIFEST
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise CheckpointError(f"{engine_dir / MANIFEST}: file name {name!r} would be copied outside {best_dir}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(engine_dir / name, target)
        verify_engine(tmp)
    return verify_engine(best_dir)
