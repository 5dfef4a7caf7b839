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


def output_name(cfg_or_profile) -> str:
    """The folder name of a configuration's outputs: ``cfg.output_name`` (the profile, plus a hash of any
    overrides), or a profile name given as a string."""
    return cfg_or_profile if isinstance(cfg_or_profile, str) else cfg_or_profile.output_name


def figures_dir(cfg_or_profile) -> Path:
    """``figures/<output name>/`` (created on demand); see :func:`output_name`."""
    d = PROJECT_ROOT / "figures" / output_name(cfg_or_profile)
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir(cfg_or_profile) -> Path:
    """``results/<output name>/``: tidy CSVs of this configuration (created on demand)."""
    d = PROJECT_ROOT / "results" / output_name(cfg_or_profile)
    d.mkdir(parents=True, exist_ok=True)
    return d


def reports_dir(cfg_or_profile) -> Path:
    """``reports/<output name>/``: executed notebooks, their HTML and the report site (created on demand)."""
    d = PROJECT_ROOT / "reports" / output_name(cfg_or_profile)
    d.mkdir(parents=True, exist_ok=True)
    return d


def params_file(profile_or_path: str | os.PathLike) -> Path:
    """Resolve a profile name (``sandbox``) or a path to a parameter file."""
    p = Path(profile_or_path)
    if p.suffix in {".yaml", ".yml"}:
        return p if p.is_absolute() else (Path.cwd() / p).resolve()
    return PARAMS_DIR / f"{profile_or_path}.yaml"
