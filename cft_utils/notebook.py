"""What every notebook does first: load the profile (with its overrides), set the profile's CPU threads, and keep
library logs out of the report.

    cfg = notebook.start(profile, overrides)

Library warnings, logging (transformers, datasets, lm-eval, accelerate, ...) and progress bars go to a log file,
not into the executed notebook: ``$CFT_NOTEBOOK_LOG`` when ``make reproduce`` runs the notebook (it points at
``reports/<name>/logs/<notebook>.log``), else ``results/<name>/logs/<notebook>.log``. In a Jupyter kernel
everything written to stderr, from Python or from a subprocess, lands there; tracebacks of errors still show in
the notebook. One printed line says where the log is.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, load_config
from .models import use_threads
from .paths import PROJECT_ROOT, results_dir
from .processes import skip_exit_collection

LOG_FILE_ENV = "CFT_NOTEBOOK_LOG"
# Switches read by the libraries when they are imported (make reproduce sets them for the kernel; start() sets
# them for later imports and subprocesses).
QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_route: dict[str, Any] = {}


def start(profile: str, overrides: dict[str, Any] | str | None = None) -> ExperimentConfig:
    """Load and validate the parameter file (``overrides``: dotted keys, or a JSON/YAML string of them) and set
    torch's CPU threads to the profile's ``training.num_threads``; returns the configuration."""
    cfg = load_config(profile, overrides)
    if in_kernel():  # papermill waits for the kernel to exit after the last cell (cft_utils.processes)
        skip_exit_collection()
    log = route_logs(cfg)
    display_defaults()
    use_threads(cfg.training.num_threads)
    if log is not None:
        print(f"library logs and progress bars: {_shown(log)}")
    return cfg


def in_kernel() -> bool:
    """True inside a Jupyter kernel (papermill or JupyterLab)."""
    return "kernel_stderr" in _route or "ipykernel" in type(sys.stderr).__module__


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def notebook_name() -> str:
    """The running notebook's file stem (JupyterLab sets ``JPY_SESSION_NAME``), or ``'notebook'``."""
    name = os.environ.get("JPY_SESSION_NAME") or os.environ.get("__session") or ""
    return Path(name).stem or "notebook"


def log_path(cfg: ExperimentConfig) -> Path:
    """Where this kernel's library logs go: ``$CFT_NOTEBOOK_LOG``, else ``results/<name>/logs/<notebook>.log``."""
    env = os.environ.get(LOG_FILE_ENV)
    return Path(env) if env else results_dir(cfg) / "logs" / f"{notebook_name()}.log"


def display_defaults() -> None:
    """Tables show three decimals (small or huge numbers in three significant digits)."""
    import pandas as pd

    def fmt(x: float) -> str:
        return f"{x:.3f}" if x == 0 or 1e-3 <= abs(x) < 1e7 else f"{x:.3g}"

    pd.set_option("display.float_format", fmt)


def _is_stderr(stream, old) -> bool:
    return stream is old or stream is sys.__stderr__ or getattr(stream, "name", None) in ("stderr", "<stderr>")


def route_logs(cfg: ExperimentConfig | None = None, path: str | os.PathLike | None = None,
               force: bool = False) -> Path | None:
    """Send warnings, library logging and progress bars to a log file (see the module docstring); return its path.

    Only inside a Jupyter kernel (or with ``force``): a script or a test keeps its stderr, and gets None. Calling
    it again with the same file does nothing; with another file it moves there."""
    if not (force or in_kernel()):
        return None
    target = Path(path) if path else log_path(cfg)
    target = target.resolve()
    if _route.get("path") == target:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = open(target, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (lives on)
    stream.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {notebook_name()}: "
                 f"{getattr(cfg, 'output_name', '?')} ===\n")
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    previous = _route.get("stream")
    old = _route.get("kernel_stderr") or sys.stderr
    if "ipykernel" in type(old).__module__:
        _route["kernel_stderr"] = old
    _redirect_fd2(stream, old)
    sys.stderr = stream
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(logger, "handlers", []):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and (_is_stderr(h.stream, old) or h.stream is previous):
                h.setStream(stream)
    logging.captureWarnings(False)  # warnings.showwarning writes to sys.stderr, i.e. the log
    _quiet_loaded_libraries()
    if previous is not None and previous is not stream:
        previous.close()
    _route.update(path=target, stream=stream)
    return target


def _redirect_fd2(stream, kernel_stderr) -> None:
    """Point file descriptor 2 (C libraries, subprocesses, ``sys.__stderr__``) at the log.

    ipykernel normally watches fd 2 through a pipe and forwards what it reads into the notebook as stderr and to
    the kernel's original stderr (the terminal of ``make reproduce``); its watcher is stopped first (it would block
    on a pipe nobody writes to any more), so neither copy is made."""
    if getattr(kernel_stderr, "_should_watch", False):
        kernel_stderr._should_watch = False  # the watcher leaves its loop at the next read ...
        try:
            os.write(2, b"\0")  # ... which this byte, still going into its pipe, wakes up
        except OSError:
            pass
    try:
        sys.__stderr__.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        os.dup2(stream.fileno(), 2)
    except (OSError, ValueError):
        pass


def _quiet_loaded_libraries() -> None:
    """Progress-bar switches of libraries imported before the environment variables were set."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
