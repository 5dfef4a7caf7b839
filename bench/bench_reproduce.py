"""Benchmark (read-only): per-notebook times of the last ``make reproduce``, from its executed notebooks.

``make reproduce`` writes executed copies to ``reports/<name>/NN_*.ipynb``; papermill records each notebook's
and each cell's duration in their metadata. This reads them (nothing is rerun: the whole sandbox reproduce takes
tens of minutes on 2 cores) and records per-notebook seconds, the total and the slowest cells, and the whole run's
wall and CPU time from ``timing.json`` (written by ``cft_utils.reproduce``; CPU time >= 1.7x wall means both cores
were busy). When no executed
notebooks are present it says so, and bench/RESULTS.md says so too.

    .venv/bin/python bench/bench_reproduce.py                      # reports/sandbox
    .venv/bin/python bench/bench_reproduce.py --reports /path/to/reports/sandbox
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from benchlib import REPO, write_result


def read_times(folder: Path) -> list[dict]:
    """One row per executed notebook: name, seconds, status, when, and its three slowest cells."""
    rows = []
    for nb_file in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(nb_file.read_text(encoding="utf-8"))
        pm = nb.get("metadata", {}).get("papermill", {})
        cells = []
        for c in nb.get("cells", []):
            d = c.get("metadata", {}).get("papermill", {}).get("duration")
            if d is not None:
                first = "".join(c.get("source", "")).strip().splitlines()
                cells.append({"seconds": round(float(d), 1), "source": (first[0] if first else "")[:80]})
        cells.sort(key=lambda x: -x["seconds"])
        rows.append({"notebook": nb_file.stem, "seconds": round(float(pm["duration"]), 1) if pm.get("duration")
                     else None, "status": "failed" if pm.get("exception") else "ok", "end_time": pm.get("end_time"),
                     "slowest_cells": cells[:3]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports", type=Path, default=REPO / "reports" / "sandbox")
    ap.add_argument("--quick", action="store_true", help="the same (it only reads files)")
    args = ap.parse_args()
    rows = read_times(args.reports) if args.reports.is_dir() else []
    commit = None
    if rows:
        try:
            commit = subprocess.run(["git", "-C", str(args.reports), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip() or None
        except OSError:
            pass
        mtime = max((args.reports / f"{r['notebook']}.ipynb").stat().st_mtime for r in rows)
        total = sum(r["seconds"] or 0 for r in rows)
        print(f"[bench] reproduce: {len(rows)} notebook(s), {total:.0f} s in all, from {args.reports}", flush=True)
        for r in rows:
            print(f"  {r['notebook']}: {r['seconds']} s ({r['status']})")
        payload = {"available": True, "reports": str(args.reports), "git_commit_of_reports": commit,
                   "written": datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds"),
                   "total_s": round(total, 1), "notebooks": rows}
        timing = args.reports / "timing.json"  # written by cft_utils.reproduce: wall and CPU time of the whole run
        if timing.exists():
            t = json.loads(timing.read_text(encoding="utf-8"))
            payload["timing"] = t
            if t.get("commit"):  # the commit that ran, rather than the checkout's HEAD now
                payload["git_commit_of_reports"] = t["commit"]
            print(f"  whole run: {t['wall_s']} s wall, {t['cpu_s']} s CPU ({t['cpu_over_wall']}x wall, "
                  f"{t['cores']} cores, complete={t['complete']})")
    else:
        print(f"[bench] reproduce: no executed notebooks in {args.reports} (run `make reproduce` first); "
              "nothing rerun", flush=True)
        payload = {"available": False, "reports": str(args.reports), "notebooks": []}
    write_result("reproduce", {**payload, "ratios": []}, False)


if __name__ == "__main__":
    main()
