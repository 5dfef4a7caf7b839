"""Completion markers that can be checked: what a finished step wrote, file by file, with sizes and hashes.

A run folder, an evaluation cache entry or a replay set is *complete* when its marker (``DONE``) exists **and**
every file the marker lists is still there with the size and sha256 it had when the step finished. Reuse checks
this, so a truncated ``model.safetensors`` or a deleted summary is reported (a :class:`DamagedResultWarning` naming
the folder and the file) and rebuilt, never read.

Checking is cheap: a file whose size and modification time are those recorded is trusted without reading it; only
a file whose mtime changed (copied without ``-a``, touched) is hashed again, and a hash is computed once per
(path, size, mtime) in a process. Markers written before this module existed (``{"run_id": ...}`` only) get a
structural check instead: every ``*.safetensors`` file's header must describe exactly the file's size and every
``*.json`` file must parse.

Bottom layer: imports only :mod:`cft_utils.io`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .io import read_json, write_json

MARKER = "DONE"


class DamagedResultWarning(UserWarning):
    """A finished result's files no longer match its completion marker; it is rebuilt."""


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content, computed once per (path, size, mtime) in this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _files(root: Path, exclude: Iterable[str]) -> list[Path]:
    skip = {MARKER, *exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        # temporary files of an atomic write and lock files are not results
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(out)


def manifest(root: str | os.PathLike, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256, mtime_ns}}`` of every file under ``root`` (top-level names in ``exclude``,
    the marker and dot-files left out)."""
    root = Path(root)
    out = {}
    for f in _files(root, exclude):
        st = f.stat()
        out[f.relative_to(root).as_posix()] = {"size": st.st_size, "sha256": file_sha256(f), "mtime_ns": st.st_mtime_ns}
    return out


def mark_complete(root: str | os.PathLike, exclude: Iterable[str] = (), **info) -> Path:
    """Write ``root/DONE`` last: ``info`` plus the manifest of every file ``root`` holds (see :func:`manifest`)."""
    root = Path(root)
    return write_json(root / MARKER, {**info, "files": manifest(root, exclude)})


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (its header does not describe its size), else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is {size} bytes: no safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is {size} bytes: its header alone claims {n} (truncated)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            return f"{path.name} is {size} bytes, its header describes {8 + n + end} (truncated)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path.name} cannot be read as safetensors ({e})"
    return None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class PickleCheckpointError(ValueError):
    """A model folder holds weights only in pickle form (loading a pickle can run arbitrary code)."""


def refuse_pickle_only(folder: str | os.PathLike, what: str = "model") -> None:
    """Raise :class:`PickleCheckpointError` when a local ``folder`` has pickle weights (``*.bin``, ``*.pt``, ...) and
    no ``*.safetensors`` anywhere under it (sentence-transformers keep weights in sub-folders); a hub id or a folder
    with safetensors passes. Loaders also pass ``use_safetensors=True``, so hub repositories are held to the same."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        return
    files = [f for f in d.rglob("*") if f.is_file()]
    if any(f.suffix == ".safetensors" for f in files):
        return
    pickles = sorted(f.relative_to(d).as_posix() for f in files if f.suffix in PICKLE_SUFFIXES
                     and f.name != "training_args.bin")
    if pickles:
        raise PickleCheckpointError(f"{what} {d}: only pickle weights ({', '.join(pickles)}); refused, since loading "
                                    f"a pickle can run arbitrary code. Convert them to safetensors first.")


def _legacy_problem(root: Path) -> str | None:
    for f in _files(root, ("checkpoints",)):
        rel = f.relative_to(root).as_posix()
        if f.suffix == ".safetensors" and (p := safetensors_problem(f)):
            return f"{rel}: {p}"
        if f.suffix == ".json":
            try:
                read_json(f)
            except (OSError, ValueError):
                return f"{rel} is not valid JSON (truncated?)"
    return None


def problem(root: str | os.PathLike) -> str | None:
    """Why the completed result in ``root`` cannot be trusted (a missing, truncated or changed file; an unreadable
    marker), or None when it is intact. A folder without a marker is not complete: ``"not finished"``."""
    root = Path(root)
    marker = root / MARKER
    if not marker.is_file():
        return "not finished"
    try:
        info = read_json(marker)
    except (OSError, ValueError):
        return f"its {MARKER} marker is unreadable"
    if not isinstance(info, dict):
        return f"its {MARKER} marker is not a mapping"
    files = info.get("files")
    if files is None:  # a marker from before manifests
        return _legacy_problem(root)
    for rel, want in files.items():
        f = root / rel
        try:
            st = f.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != want["size"]:
            return f"{rel} is {st.st_size} bytes, expected {want['size']} (truncated or replaced)"
        if st.st_mtime_ns != want.get("mtime_ns") and file_sha256(f) != want["sha256"]:
            return f"{rel} changed after it was written (sha256 differs)"
    return None


def is_complete(root: str | os.PathLike, what: str | None = None) -> bool:
    """Whether ``root`` holds a finished, intact result. A damaged one is reported with a
    :class:`DamagedResultWarning` naming ``what`` (default: the folder) and the file, and counts as not complete."""
    p = problem(root)
    if p is None:
        return True
    if p != "not finished":
        warnings.warn(f"{what or root} ({root}) is damaged: {p}; it will be rebuilt, not read",
                      DamagedResultWarning, stacklevel=2)
    return False


def clear_marker(root: str | os.PathLike) -> None:
    """Remove ``root``'s marker (before a damaged or forced result is rebuilt in place)."""
    try:
        (Path(root) / MARKER).unlink()
    except FileNotFoundError:
        pass
