"""Engine manifests: write, read, verify (the directory contract is in ``slimformer.engines``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path, PureWindowsPath
from typing import Any

from slimformer.contract import INPUT_NAMES, OUTPUT_NAME
from slimformer.errors import CheckpointError
from slimformer.io import sha256_file, write_json

MANIFEST = "manifest.json"
FORMATS = ("onnx", "torchscript", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "tensorrt": "model.engine"}
INPUTS = [{"name": name, "shape": ["batch", "sequence"], "dtype": "int64"} for name in INPUT_NAMES]
OUTPUTS = [{"name": OUTPUT_NAME, "shape": ["batch", "classes"], "dtype": "float32"}]


def runtime_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def regular_files(engine_dir: Path) -> list[str]:
    """Every regular file under ``engine_dir`` (manifest included), by relative POSIX path, sorted.

    Symbolic links (to files or directories) and special files are refused with a
    CheckpointError naming them: a link could make a verified name read bytes from outside
    the directory, and nothing this project writes is a link.
    """
    found = []
    for root, dirs, files in os.walk(engine_dir, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise CheckpointError(f"{path}: a symbolic link inside an engine directory; engines hold regular files only")
            if name in files and not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path}: not a regular file; engines hold regular files only")
            if name in files:
                found.append(path.relative_to(engine_dir).as_posix())
    return sorted(found)


def file_hashes(engine_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``engine_dir`` except the manifest, by relative POSIX path."""
    return {name: sha256_file(engine_dir / name) for name in regular_files(engine_dir) if name != MANIFEST}


def write_manifest(
    engine_dir: Path,
    *,
    format: str,
    precision: str,
    variant: str,
    source_model: str,
    labels: list[str],
    parity: dict[str, Any] | None = None,
    opset: int | None = None,
    runtime: dict[str, str] | None = None,
    status: str = "ok",
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file in ``engine_dir`` and write ``manifest.json``; return the manifest.

    Call it last, once the engine passed its parity gate: the hashes seal the directory.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} not in {FORMATS}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    if status not in ("ok", "skipped") or (status == "skipped") != bool(reason):
        raise ValueError("status is 'ok', or 'skipped' with a reason")
    manifest: dict[str, Any] = {
        "format": format,
        "precision": precision,
        "variant": variant,
        "source_model": str(source_model),
        "status": status,
        "files": file_hashes(Path(engine_dir)),
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "opset": opset,
        "runtime_versions": runtime or {},
        "parity": parity or {},
        "labels": list(labels),
    }
    if reason:
        manifest["reason"] = reason
    manifest |= extra or {}
    write_json(Path(engine_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(engine_dir: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of ``engine_dir``; CheckpointError naming it if missing or malformed."""
    path = Path(engine_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no engine manifest; not an engine directory (rerun the export stage)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable engine manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: malformed engine manifest: a JSON object is expected, got {type(manifest).__name__}")
    missing = [k for k in ("format", "precision", "variant", "files", "status") if k not in manifest]
    if missing:
        raise CheckpointError(f"{path}: manifest lacks {', '.join(missing)}")
    problem = manifest_type_problem(manifest)
    if problem:
        raise CheckpointError(f"{path}: malformed engine manifest: {problem}")
    if manifest["format"] not in FORMATS:
        raise CheckpointError(f"{path}: unknown engine format {manifest['format']!r}; known: {', '.join(FORMATS)}")
    return manifest


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# The type each manifest field must have where present (a damaged or hostile manifest must not
# reach code that trusts it, e.g. int(manifest["device"]) or path joins of its keys).
MANIFEST_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: isinstance(v, str), "a string"),
    "precision": (lambda v: isinstance(v, str), "a string"),
    "variant": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: v in ("ok", "skipped"), "'ok' or 'skipped'"),
    "files": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, str) for k, d in v.items()),
              "an object of {relative file name: sha256 string}"),
    "labels": (_is_str_list, "a list of strings"),
    "inputs": (lambda v: isinstance(v, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in v),
               "a list of {name, shape, dtype} objects"),
    "device": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a CUDA device index (an integer >= 0)"),
    "max_length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
}


def manifest_type_problem(manifest: dict[str, Any]) -> str | None:
    """The first field of ``manifest`` whose type is wrong, said in words; None if all are right."""
    for key, (ok, expected) in MANIFEST_TYPES.items():
        if key in manifest and not ok(manifest[key]):
            return f"{key!r} must be {expected}, got {json.dumps(manifest[key])[:80]}"
    return None


def safe_member(engine_dir: Path, name: str) -> Path:
    """``engine_dir / name`` for a manifest key that stays inside ``engine_dir``; CheckpointError otherwise.

    Refused: absolute names, ``..`` or ``.`` parts, empty parts, backslashes, the manifest itself.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or PureWindowsPath(name).is_absolute()
            or any(p in ("", ".", "..") for p in parts) or name == MANIFEST):  # fmt: skip
        raise CheckpointError(f"{engine_dir / MANIFEST}: file name {name!r} is not a plain relative path inside the engine directory")
    return engine_dir.joinpath(*parts)


def source_labels(source_dir: Path) -> list[str]:
    """Class names by id: from an engine manifest, or from a model's config.json id2label."""
    if (source_dir / MANIFEST).is_file():
        return list(read_manifest(source_dir).get("labels", []))
    id2label = json.loads((source_dir / "config.json").read_text(encoding="utf-8")).get("id2label", {})
    return [id2label[k] for k in sorted(id2label, key=int)]


def verify_engine(engine_dir: str | Path) -> dict[str, Any]:
    """Check that ``engine_dir`` holds exactly what its manifest lists, byte for byte; return the manifest.

    Every regular file under the directory must be listed with a matching sha256 (the engine
    file of an "ok" engine among them); every listed name must be a plain relative path
    inside the directory; no symbolic link may appear anywhere. For ONNX engines the model
    is also run through ``onnx.checker``. Any failure raises CheckpointError naming the file.

    This proves the directory is intact and complete, not who made it: the hashes sit in the
    same directory. Trust in a TorchScript archive is asked for separately (:func:`load_engine`).
    """
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    listed = {name: safe_member(engine_dir, name) for name in manifest["files"]}
    on_disk = [n for n in regular_files(engine_dir) if n != MANIFEST]
    for name in on_disk:
        if name not in listed:
            raise CheckpointError(f"{engine_dir / name}: not listed in {MANIFEST} (an engine directory holds only the files it lists)")
    for name, path in listed.items():
        if name not in on_disk:
            raise CheckpointError(f"{path}: listed in {MANIFEST} but missing")
        if sha256_file(path) != manifest["files"][name]:
            raise CheckpointError(f"{path}: sha256 does not match {MANIFEST} (modified or corrupt file)")
    if manifest["status"] == "ok":
        engine_file = ENGINE_FILES[manifest["format"]]
        if engine_file not in listed:
            raise CheckpointError(f"{engine_dir / engine_file}: the engine file is not listed in {MANIFEST}")
        if manifest["format"] == "onnx":
            check_onnx(engine_dir / engine_file)
    return manifest


def check_onnx(path: Path) -> None:
    """Reject a file that is not a complete, valid ONNX model (CheckpointError naming it)."""
    import onnx  # noqa: PLC0415

    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model file missing")
    try:
        onnx.checker.check_model(str(path))  # by path: works for any size, checks external data too
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types for bad files
        raise CheckpointError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def engine_metrics(manifest: dict[str, Any], engine_dir: Path) -> dict[str, Any]:
    """The numbers a stage reports for one engine (size, build time, parity)."""
    out: dict[str, Any] = {"variant": manifest["variant"], "status": manifest["status"],
                           "format": manifest["format"], "precision": manifest["precision"]}  # fmt: skip
    if manifest["status"] != "ok":
        return out | {"reason": manifest.get("reason")}
    out["engine_bytes"] = (engine_dir / ENGINE_FILES[manifest["format"]]).stat().st_size
    out["build_seconds"] = manifest.get("build_seconds")
    parity = manifest.get("parity", {})
    out["parity_max_abs_diff"] = parity.get("max_abs_diff")
    if "agreement" in parity:
        out["agreement"] = parity["agreement"]
    return out
