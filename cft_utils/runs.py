"""Content-addressed runs: ids from resolved configurations, skip-if-done, resumable checkpoints, provenance.

A run lives in ``$CFT_HOME/runs/<run id>/``: ``run.json`` (the resolved configuration that produced the id),
``checkpoints/`` while training, ``model/`` (safetensors + tokenizer) when done, ``provenance.json`` and a
``DONE`` marker written last. Asking for a finished run returns it without compute; asking for an interrupted
one resumes from its last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .paths import PROJECT_ROOT, cft_home


def run_id(resolved: dict[str, Any], prefix: str = "") -> str:
    """A short, stable id: sha256 of the canonical JSON of ``resolved`` (key order does not matter)."""
    blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    h = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{prefix}-{h}" if prefix else h


def run_dir(rid: str, home: Path | None = None) -> Path:
    return Path(home or cft_home()) / "runs" / rid


def is_done(rdir: Path) -> bool:
    return (Path(rdir) / "DONE").exists()


_CKPT = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` folder that was written completely, else None.

    A run killed while saving can leave a partial folder; the Trainer writes ``trainer_state.json`` last,
    so a folder without it is removed rather than resumed from.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = []
    for d in ckpt_dir.iterdir():
        m = _CKPT.match(d.name)
        if m and d.is_dir():
            if (d / "trainer_state.json").exists() and any(d.glob("*.safetensors")):
                found.append((int(m.group(1)), d))
            else:
                shutil.rmtree(d, ignore_errors=True)
    return str(max(found)[1]) if found else None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:
        return None


PROVENANCE_PACKAGES = ("torch", "transformers", "trl", "datasets", "tokenizers", "peft", "accelerate",
                       "sentence-transformers", "lm-eval", "safetensors", "numpy")


def provenance(seed: int | None = None, **extra) -> dict[str, Any]:
    """Git commit (and whether the tree was dirty), package versions, seed, hardware and time."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for p in PROVENANCE_PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    hw: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                          "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torch

        hw["torch_threads"] = torch.get_num_threads()
        hw["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # provenance must never break a run
        pass
    status = _git("status", "--porcelain")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions,
        "seed": seed,
        "hardware": hw,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
