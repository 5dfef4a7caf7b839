"""Where things live. Every path in the package is anchored here, never at the working directory.

``PROJECT_ROOT`` is the repository checkout. Heavy artifacts (models, checkpoints, generated data,
per-run results) go under ``cft_home()``: ``$CFT_HOME`` when set, else ``<PROJECT_ROOT>/artifacts``
(git-ignored). Light, shareable outputs (tidy CSVs, tables, figures) go to ``results/`` and
``figures/`` in the checkout, one folder per profile.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = PROJECT_ROOT / "params"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
DATA_DIR = PROJECT_ROOT / "data"
ACCELERATE_CONFIGS_DIR = PROJECT_ROOT / "configs" / "accelerate"

CFT_HOME_ENV = "CFT_HOME"


def cft_home() -> Path:
    """The home of heavy artifacts: ``$CFT_HOME`` or ``<PROJECT_ROOT>/artifacts``."""
    env = os.environ.get(CFT_HOME_ENV)
    home = Path(env).expanduser() if env else PROJECT_ROOT / "artifacts"
    return home.resolve()


def figures_dir(profile: str) -> Path:
    """``figures/<profile>/`` (created on demand)."""
    d = PROJECT_ROOT / "figures" / profile
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir(profile: str) -> Path:
    """``results/<profile>/``: tidy CSVs of this profile (created on demand)."""
    d = PROJECT_ROOT / "results" / profile
    d.mkdir(parents=True, exist_ok=True)
    return d


def params_file(profile_or_path: str | os.PathLike) -> Path:
    """Resolve a profile name (``sandbox``) or a path to a parameter file."""
    p = Path(profile_or_path)
    if p.suffix in {".yaml", ".yml"}:
        return p if p.is_absolute() else (Path.cwd() / p).resolve()
    return PARAMS_DIR / f"{profile_or_path}.yaml"
