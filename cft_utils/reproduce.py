"""``make reproduce``: execute the notebooks in order with papermill and render them to HTML.

For each notebook ``notebooks/NN_*.ipynb`` this writes ``reports/<profile>/NN_*.ipynb`` (executed) and
``reports/<profile>/NN_*.html``. The notebooks themselves write results under ``results/<profile>/``, figures
and tables under ``figures/<profile>/`` and heavy artifacts under ``$CFT_HOME``. Every expensive stage inside
a notebook is skipped when its run is already complete, so a second ``make reproduce`` is quick, and an
interrupted one resumes.

    python -m cft_utils.reproduce --profile sandbox [--only 01 02] [--timeout 3600]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .io import atomic_path
from .paths import NOTEBOOKS_DIR, PROJECT_ROOT

# The pipeline, in order; later issues add their notebooks here.
NOTEBOOKS = [
    "01_phase1_sft.ipynb",
    "02_phase2_sft.ipynb",
    "03_task_ability.ipynb",
    "04_language_ability.ipynb",
    "05_dataset_similarity.ipynb",
    "06_parameter_difference.ipynb",
    "07_generative_replay.ipynb",
    "08_layer_freezing.ipynb",
    "09_representation_geometry.ipynb",
]


def execute_notebook(name: str, profile: str, out_dir: Path, timeout: int | None = None,
                     parameters: dict | None = None) -> Path:
    """Run one notebook with papermill (parameters injected after its ``parameters`` cell) and render HTML."""
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    from .setup_env import ensure_kernel

    kernel = ensure_kernel()
    src = NOTEBOOKS_DIR / name
    out = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, **(parameters or {})}
    with atomic_path(out, suffix=".ipynb") as tmp:
        pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOKS_DIR),
                            execution_timeout=timeout, progress_bar=False, report_mode=False)
    html, _ = HTMLExporter().from_notebook_node(nbformat.read(out, as_version=4))
    with atomic_path(out.with_suffix(".html"), suffix=".html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Execute the compendium's notebooks with papermill.")
    ap.add_argument("--profile", default="sandbox")
    ap.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 01 02")
    ap.add_argument("--out", default=None, help="output folder (default reports/<profile>)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    out_dir = Path(args.out) if args.out else PROJECT_ROOT / "reports" / args.profile
    todo = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    t_all = time.time()
    for name in todo:
        t = time.time()
        print(f"[reproduce] {name} ({args.profile}) ...", flush=True)
        execute_notebook(name, args.profile, out_dir, args.timeout)
        print(f"[reproduce] {name} done in {time.time() - t:.0f} s -> {out_dir / name}", flush=True)
    print(f"[reproduce] all done in {time.time() - t_all:.0f} s; reports in {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
