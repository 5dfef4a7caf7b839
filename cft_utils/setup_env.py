"""Post-install set-up, run by ``make setup``: register the project's Jupyter kernel in this environment.

The kernel spec goes into ``<sys.prefix>/share/jupyter/kernels/cft-compendium`` (``--sys-prefix``), where
JupyterLab and papermill started from this environment find it on a fresh machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KERNEL_NAME = "cft-compendium"
KERNEL_DISPLAY = "Python (cft-compendium)"


def kernel_spec_dir() -> Path:
    return Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def ensure_kernel() -> str:
    """Register the kernel for this interpreter unless a spec pointing at it exists; return its name."""
    spec = kernel_spec_dir() / "kernel.json"
    if spec.exists():
        try:
            if json.loads(spec.read_text())["argv"][0] == sys.executable:
                return KERNEL_NAME
        except (KeyError, IndexError, json.JSONDecodeError):
            pass
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
                    "--display-name", KERNEL_DISPLAY], check=True, capture_output=True)
    return KERNEL_NAME


def main() -> int:
    print(f"jupyter kernel: {ensure_kernel()} ({sys.executable})")
    try:  # IFEval's sentence splitter data, offline (added by the evaluation module when present)
        from .evaluation.ifeval_offline import ensure_punkt_tab

        print(f"nltk punkt_tab: {ensure_punkt_tab()}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
