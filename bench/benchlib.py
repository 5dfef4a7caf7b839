"""Shared by the benchmarks: a bench home, timed subprocesses, A/B alternation, medians, result files.

Every benchmark measures a ratio A/B in one process tree on one machine, alternating A and B (A B A B ...) so a
load change on a shared machine hits both sides, and reports the median over repetitions together with every
repetition. Results go to ``bench/results/<bench>.json``; ``bench/run_all.py`` turns them into bench/RESULTS.md.

Training benchmarks run in their own ``CFT_HOME`` (``$CFT_HOME/bench-home``, default ``artifacts/bench-home``)
so they never touch a real run folder; the built sandbox (world, tokenizer, base model) of the real home is
linked into it, and built first when missing (``python -m cft_utils.train --prepare``, a few minutes once).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PY = sys.executable
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def real_home() -> Path:
    """The user's CFT_HOME (where the sandbox is built once)."""
    from cft_utils.paths import cft_home

    return cft_home()


def bench_home(profile: str = "sandbox") -> Path:
    """A CFT_HOME for benchmark runs, with the real home's built sandbox linked in; sets ``$CFT_HOME``."""
    real = real_home()
    if real.name == "bench-home":  # already inside a bench home
        return real
    env = {**os.environ, "CFT_HOME": str(real), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([PY, "-m", "cft_utils.train", "--params", profile, "--prepare"], check=True, env=env,
                   stdout=subprocess.DEVNULL, cwd=REPO)
    home = real / "bench-home"
    (home / "runs").mkdir(parents=True, exist_ok=True)
    link = home / "sandbox"
    if not link.exists():
        link.symlink_to(real / "sandbox", target_is_directory=True)
    os.environ["CFT_HOME"] = str(home)
    return home


def sub_env(threads: int, **extra) -> dict:
    """Environment of a benchmark subprocess: offline, the bench home, ``threads`` OpenMP/MKL threads."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONWARNINGS": "ignore", **{k: str(v) for k, v in extra.items()}}


def timed(cmd: list[str], env: dict, log: Path | None = None) -> float:
    """Run ``cmd`` (cwd: the repository), fail loudly with its output tail; return wall seconds."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return wall


def alternate(a: Callable[[], dict], b: Callable[[], dict], reps: int) -> tuple[list[dict], list[dict]]:
    """``reps`` repetitions of A then B (A B A B ...); each callable returns a dict of measurements."""
    ra, rb = [], []
    for i in range(reps):
        ra.append(a())
        rb.append(b())
        print(f"  rep {i + 1}/{reps}: A {ra[-1]}  B {rb[-1]}", flush=True)
    return ra, rb


def ratio(name: str, a_label: str, b_label: str, a: list[float], b: list[float], higher_is_better: bool = True,
          unit: str = "x", target: str | None = None, per_rep: list[float] | None = None) -> dict:
    """A ratio entry: per repetition A/B (or B/A for times, so that > 1 means A is faster) and its median."""
    reps = per_rep if per_rep is not None else [
        (x / y if higher_is_better else y / x) for x, y in zip(a, b, strict=True)]
    return {"name": name, "a": a_label, "b": b_label, "ratio": statistics.median(reps),
            "min": min(reps), "max": max(reps), "reps": [round(r, 4) for r in reps], "n": len(reps), "unit": unit,
            "target": target, "a_values": [round(x, 4) for x in a], "b_values": [round(x, 4) for x in b]}


def machine() -> dict:
    """CPU, cores, load and package versions of this machine."""
    import importlib.metadata as md

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for p in ("torch", "transformers", "trl", "datasets", "accelerate"):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "packages": versions,
            "load_average": [round(x, 2) for x in load] if load else None, "platform": platform.platform()}


def write_result(bench: str, payload: dict, quick: bool) -> Path:
    """``bench/results/<bench>[-quick].json`` with the command, date and machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{bench}{'-quick' if quick else ''}.json"
    payload = {"bench": bench, "quick": quick, "command": " ".join([Path(PY).name, *sys.argv]),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), **payload}
    out.write_text(json.dumps(payload, indent=1))
    print(f"[bench] {bench}: " + "; ".join(f"{r['name']} {r['ratio']:.2f}{r['unit']}" for r in payload["ratios"])
          + f" -> {out.relative_to(REPO)}", flush=True)
    return out


def train_here(sets: list[str], pick: Callable, log: Path) -> dict:
    """Train the sandbox Phase 1 run that ``pick(run)`` selects, from scratch, in this process (its output appended
    to ``log``); returns its ``summary.json``. For benchmarks that time the training loop (``train_loop_s``, measured
    by the run itself): the libraries load once per benchmark, not once per run. The code path is the executor
    worker's (``train.execute``)."""
    import json

    from cft_utils.config import load_config, parse_set
    from cft_utils.executor import redirect_output
    from cft_utils.plan import plan_runs
    from cft_utils.train import execute

    cfg = load_config("sandbox", parse_set(sets))
    run = next(r for r in plan_runs(cfg).phase1 if pick(r))
    fresh(run.dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    with redirect_output(log):
        execute(run, cfg, quiet=True)
    return {"name": run.name, **json.loads((run.dir / "summary.json").read_text())}


def fresh(path: Path) -> None:
    """Remove a run folder so the next run trains from scratch."""
    if path.exists():
        shutil.rmtree(path)
