"""Content-addressed runs: ids from resolved configurations, skip-if-done, resumable checkpoints, provenance.

A run lives in ``$CFT_HOME/runs/<run id>/``: ``run.json`` (the resolved configuration that produced the id),
``checkpoints/`` while training, ``model/`` (safetensors + tokenizer) when done, ``provenance.json`` and a
``DONE`` marker written last. Asking for a finished run returns it without compute; asking for an interrupted
one resumes from its last complete checkpoint.

``DONE`` lists the size and sha256 of every file the run produced (:mod:`cft_utils.integrity`); a run whose files
no longer match (a truncated ``model.safetensors``, a deleted summary) is reported and counts as not done, so it is
rebuilt rather than read. One process at a time writes a run (:func:`run_lock`, :mod:`cft_utils.locks`).
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .integrity import is_complete, mark_complete
from .io import read_json, read_jsonl
from .locks import exclusive
from .paths import PROJECT_ROOT, cft_home


def run_id(resolved: dict[str, Any], prefix: str = "") -> str:
    """A short, stable id: sha256 of the canonical JSON of ``resolved`` (key order does not matter)."""
    blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    h = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{prefix}-{h}" if prefix else h


def run_dir(rid: str, home: Path | None = None) -> Path:
    """``$CFT_HOME/runs/<run id>/``."""
    return Path(home or cft_home()) / "runs" / rid


def is_done(rdir: Path) -> bool:
    """Whether the run folder holds its completion marker and every file it lists is intact (a damaged run is
    reported with a warning naming the run and the file, and is not done)."""
    return is_complete(rdir, what=f"run {Path(rdir).name}")


# Left out of a run's manifest: resumption state, not results.
NOT_RESULTS = ("checkpoints",)


def mark_done(rdir: Path, run_id: str, **info) -> Path:
    """Write the run's ``DONE`` marker last: ``run_id``, ``info`` and the size and sha256 of every file it holds."""
    return mark_complete(rdir, exclude=NOT_RESULTS, run_id=run_id, **info)


def run_lock(rdir: Path, what: str | None = None, wait: float | None = None):
    """The run folder's lock (one writer per run): a context manager; see :func:`cft_utils.locks.exclusive`."""
    return exclusive(Path(rdir), what=what or f"run {Path(rdir).name}", wait=wait)


@dataclass(frozen=True)
class Variant:
    """What a mitigation run does on top of Phase 2: its strategy (registry name), table label (``GR_5``), the
    resolved parameters the strategy reads when it runs (they are part of the run id) and the paper table it fills."""

    strategy: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    table: str | None = None


@dataclass
class RunPlan:
    """One run of the grid, fully resolved; its id is a hash of ``resolved``.

    ``init`` is where training starts: ``"sandbox-base"``, a hub id or local folder, or ``"run:<id>"`` (the
    ``parent`` run's model). ``data_key`` is the dataset trained on (None: an off-the-shelf model registered
    without training, whose weights are at ``init``). A mitigation run has a ``variant`` and the unmitigated Phase 2
    run of its cell as ``baseline``.
    """

    name: str  # e.g. "phase2/tiny-llama/alpaca->multialpaca"
    phase: int  # 1 or 2 (the sandbox Instruct build counts as phase 1)
    model: str
    phase1_data: str  # dataset key or "Instruct"
    phase2_data: str | None
    strategy: str  # "none", or the variant's label
    data_key: str | None
    init: str
    hparams: Any  # config.TrainingSpec
    resolved: dict[str, Any]
    run_id: str
    parent: RunPlan | None = None
    baseline: RunPlan | None = None
    variant: Variant | None = None
    seed: int | None = None  # the training seed (None: an off-the-shelf model, or one built once per profile)

    @property
    def cell(self) -> str:
        """The run's name without its seed: the same for every seed of one grid cell or strategy."""
        return self.name.rsplit("/s", 1)[0] if self.seed is not None and self.name.endswith(f"/s{self.seed}") \
            else self.name

    @property
    def dir(self) -> Path:
        return run_dir(self.run_id)

    @property
    def model_dir(self) -> Path:
        """Where the weights are (for a registered Instruct model: its hub id or folder)."""
        if self.data_key is None and self.variant is None:
            return Path(self.init)
        return self.dir / "model"

    @property
    def registered(self) -> bool:
        """An off-the-shelf model used as it is (nothing to train)."""
        return self.data_key is None and self.variant is None

    def done(self) -> bool:
        return self.registered or is_done(self.dir)


def read_summary(run: RunPlan) -> dict | None:
    """The run's ``summary.json`` (None while it has none)."""
    p = Path(run.dir) / "summary.json"
    return read_json(p) if p.exists() else None


def read_train_log(run: RunPlan) -> list[dict]:
    """The run's logged training losses (``train_log.jsonl``; empty while it has none)."""
    p = Path(run.dir) / "train_log.jsonl"
    return read_jsonl(p) if p.exists() else []


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


def git(*args: str) -> str | None:
    """``git <args>`` in the project's checkout: its stripped output, or None (no git, not a checkout, an error)."""
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001 (provenance without a commit is still provenance)
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
    status = git("status", "--porcelain")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions,
        "seed": seed,
        "hardware": hw,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
