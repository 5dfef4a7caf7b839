"""The report site: ``reports/<name>/index.html``, one page that a colleague can open from a zip file.

It shows the claims and their verdicts (``results/<name>/claims.csv``, when the claims stage wrote it), every
paper table and figure by its paper name (``table1``, ``tableA1``, ``fig1_tsne``, ``figC4_mitigations``, ...)
and then the other figures and tables, each with a link to the executed notebook (HTML) that made it, and the
commit, profile, overrides and date of the run. Figures and tables are copied into ``reports/<name>/figures/``
and every link is relative: no server, no network, no script.

    from cft_utils.report.site import write_site
    write_site(PROJECT_ROOT / "reports" / "sandbox", "sandbox")
"""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..io import apply_umask, write_text
from ..paths import PROJECT_ROOT
from ..runs import git

PAPER_STEM = re.compile(r"^(table|fig)([A-Z]?)(\d+)(?:_.*)?$")
ASSET_EXTS = (".png", ".pdf", ".svg", ".csv", ".md", ".tex", ".json")
MAX_TABLE_ROWS = 60

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:2rem auto;max-width:1100px;
     padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{margin-bottom:.3rem} table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0}
td,th{border:1px solid #ccc;padding:.15rem .45rem;text-align:right} th{background:#f3f3f3}
td.l,th.l{text-align:left} .meta td{text-align:left} .item{margin:1.2rem 0 2rem}
.links a{margin-right:.8rem;font-size:.9rem} img{max-width:100%;height:auto;border:1px solid #eee}
.scroll{overflow-x:auto} .holds{background:#e6f4e6} .fails{background:#fbe3e3} .inconclusive{background:#fff6d6}
.failed{color:#b00;font-weight:bold} .muted{color:#777}
"""


def paper_key(stem: str) -> tuple:
    """Sort key in the paper's order: tables before figures, main text before appendices A, B, C, numbers
    numerically; stems that are not paper items sort last, by name."""
    m = PAPER_STEM.match(stem)
    if not m:
        return (2, "", 0, stem)
    kind, appendix, number = m.groups()
    return (0 if kind == "table" else 1, appendix, int(number), stem)


def paper_label(stem: str) -> str | None:
    """``table1`` -> 'Table 1', ``figC4_mitigations`` -> 'Figure C4'; None for other stems."""
    m = PAPER_STEM.match(stem)
    if not m:
        return None
    kind, appendix, number = m.groups()
    return f"{'Table' if kind == 'table' else 'Figure'} {appendix}{number}"


def collect_assets(figures: Path) -> dict[str, list[Path]]:
    """Files under ``figures`` grouped by stem (relative stems for sub-folders), in paper order."""
    groups: dict[str, list[Path]] = {}
    if figures.is_dir():
        for p in sorted(figures.rglob("*")):
            if p.is_file() and p.suffix.lower() in ASSET_EXTS and not p.name.startswith("."):
                stem = p.relative_to(figures).with_suffix("").as_posix()
                groups.setdefault(stem, []).append(p)
    return dict(sorted(groups.items(), key=lambda kv: paper_key(Path(kv[0]).name)))


def _notebook_text(nb) -> tuple[str, str]:
    """(all code sources, all text outputs) of a notebook."""
    sources, outputs = [], []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        sources.append(c.source)
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                outputs.append(o.get("text", ""))
            elif "data" in o:
                for mime in ("text/plain", "text/markdown", "text/html"):
                    if mime in o["data"]:
                        outputs.append(str(o["data"][mime]))
    return "\n".join(sources), "\n".join(outputs)


def _window(nb) -> tuple[float, float] | None:
    meta = nb.metadata.get("papermill", {})
    try:
        start = datetime.fromisoformat(meta["start_time"]).timestamp()
        end = datetime.fromisoformat(meta["end_time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    return start - 1, end + 1


def notebook_index(report_dir: Path) -> list[dict[str, Any]]:
    """The executed notebooks in ``report_dir``: name, HTML, log, status, execution window, text."""
    import nbformat

    out = []
    for p in sorted(report_dir.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        src, outs = _notebook_text(nb)
        meta = nb.metadata.get("papermill", {})
        out.append({"name": p.stem, "ipynb": p, "html": p.with_suffix(".html"),
                    "log": report_dir / "logs" / f"{p.stem}.log", "failed": bool(meta.get("exception")),
                    "duration": meta.get("duration"), "window": _window(nb), "source": src, "outputs": outs})
    return out


def _mentions(text: str, stem: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(stem)}(?![A-Za-z0-9])", text) is not None


def maker(stem: str, files: list[Path], notebooks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The notebook that made ``stem``: the one whose execution window holds the files' modification time,
    else the first whose code names the stem in a saving line, names it at all, or printed it."""
    mtime = max(f.stat().st_mtime for f in files)
    for nb in notebooks:
        if nb["window"] and nb["window"][0] <= mtime <= nb["window"][1]:
            return nb
    name = Path(stem).name
    for test in (lambda nb: any("save" in ln and _mentions(ln, name) for ln in nb["source"].splitlines()),
                 lambda nb: _mentions(nb["source"], name),
                 lambda nb: _mentions(nb["outputs"], name)):
        for nb in notebooks:
            if test(nb):
                return nb
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.3f}" if v == 0 or 1e-3 <= abs(v) < 1e7 else f"{v:.3g}"
    return "" if v is None else str(v)


def html_table(df, max_rows: int = MAX_TABLE_ROWS, row_class: str | None = None) -> str:
    """A small HTML table (numbers right-aligned, three decimals, text left-aligned; first rows only)."""
    head = "".join(f'<th class="{"l" if df[c].dtype.kind not in "fiu" else ""}">{html.escape(str(c))}</th>'
                   for c in df.columns)
    rows = []
    for _, r in df.head(max_rows).iterrows():
        cls = f' class="{html.escape(str(r[row_class]).lower())}"' if row_class and row_class in df else ""
        cells = "".join(f'<td class="{"l" if df[c].dtype.kind not in "fiu" else ""}">{html.escape(_fmt(r[c]))}</td>'
                        for c in df.columns)
        rows.append(f"<tr{cls}>{cells}</tr>")
    more = (f'<p class="muted">{len(df) - max_rows} more rows in the CSV.</p>' if len(df) > max_rows else "")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>{more}'


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except Exception:  # an unreadable table is linked, not shown
        return None


def _caption(md: Path | None) -> str:
    """The caption line save_table puts above a Markdown table (empty when there is none)."""
    if md is None:
        return ""
    first = md.read_text(encoding="utf-8").split("\n\n", 1)[0].strip()
    return "" if first.startswith("|") else first


def _rel(path: Path, base: Path) -> str:
    return Path(path).relative_to(base).as_posix()


def write_site(report_dir: str | Path, profile: str, overrides: dict | None = None, name: str | None = None,
               figures: str | Path | None = None, results: str | Path | None = None) -> Path:
    """Write ``<report_dir>/index.html`` (and copy the figures/tables beside it); return its path.

    ``name``: the output name (default: the report folder's name); ``figures``/``results``: where the run wrote
    them (default ``figures/<name>``, ``results/<name>`` in the checkout)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    name = name or report_dir.name
    figures = Path(figures) if figures else PROJECT_ROOT / "figures" / name
    results = Path(results) if results else PROJECT_ROOT / "results" / name
    notebooks = notebook_index(report_dir)
    assets = collect_assets(figures)

    copies = report_dir / "figures"
    if copies.exists():
        shutil.rmtree(copies)
    for files in assets.values():
        for f in files:
            target = copies / f.relative_to(figures)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            apply_umask(target)

    parts = [f"<h1>Continual fine-tuning compendium: {html.escape(name)}</h1>", _meta(profile, name, overrides)]
    parts.append(_notebooks_section(notebooks, report_dir))
    parts.append(_claims_section(results / "claims.csv"))
    paper = {s: f for s, f in assets.items() if PAPER_STEM.match(Path(s).name)}
    other = {s: f for s, f in assets.items() if s not in paper}
    parts.append("<h2>Paper tables and figures</h2>")
    parts.append("".join(_item(s, f, figures, report_dir, notebooks) for s, f in paper.items())
                 or '<p class="muted">None written yet.</p>')
    if other:
        parts.append("<h2>Other figures and tables</h2>")
        parts.append("".join(_item(s, f, figures, report_dir, notebooks) for s, f in other.items()))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>CFT compendium: {html.escape(name)}</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return write_text(report_dir / "index.html", page)


def _meta(profile: str, name: str, overrides: dict | None) -> str:
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain")
    rows = [("profile", profile), ("output name", name),
            ("overrides", json.dumps(overrides, ensure_ascii=False) if overrides else "none (the profile's defaults)"),
            ("commit", (commit or "unknown") + (" (with uncommitted changes)" if dirty else "")),
            ("written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    body = "".join(f"<tr><th class=\"l\">{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _notebooks_section(notebooks: list[dict[str, Any]], report_dir: Path) -> str:
    if not notebooks:
        return "<h2>Notebooks</h2><p class=\"muted\">No executed notebooks in this folder.</p>"
    rows = []
    for nb in notebooks:
        link = (f'<a href="{_rel(nb["html"], report_dir)}">{html.escape(nb["name"])}</a>' if nb["html"].exists()
                else html.escape(nb["name"]))
        status = '<span class="failed">failed</span>' if nb["failed"] else "ran"
        secs = f"{nb['duration']:.0f} s" if isinstance(nb["duration"], (int, float)) else ""
        log = f'<a href="{_rel(nb["log"], report_dir)}">log</a>' if nb["log"].exists() else ""
        rows.append(f"<tr><td class=\"l\">{link}</td><td class=\"l\">{status}</td><td>{secs}</td>"
                    f"<td class=\"l\">{log}</td></tr>")
    return ("<h2>Notebooks</h2><table><tr><th class=\"l\">report</th><th class=\"l\">status</th><th>time</th>"
            "<th class=\"l\">library log</th></tr>" + "".join(rows) + "</table>")


def _claims_section(path: Path) -> str:
    if not path.exists():
        return ""
    df = _read_csv(path)
    if df is None:
        return f'<h2>Claims</h2><p>Could not read {html.escape(path.name)}.</p>'
    return ("<h2>Claims and verdicts</h2><p class=\"muted\">Verdicts come from 95 % intervals over test items "
            "and seeds: holds, fails or inconclusive.</p>"
            + html_table(df, max_rows=500, row_class="verdict" if "verdict" in df.columns else None))


def _item(stem: str, files: list[Path], figures: Path, report_dir: Path, notebooks: list[dict[str, Any]]) -> str:
    base = Path(stem).name
    label = paper_label(base)
    title = f"{label} <span class=\"muted\">({html.escape(stem)})</span>" if label else html.escape(stem)
    by_ext = {f.suffix.lower(): f for f in files}
    copies = report_dir / "figures"
    links = [f'<a href="{_rel(copies / f.relative_to(figures), report_dir)}">{f.suffix[1:].upper()}</a>'
             for f in files]
    nb = maker(stem, files, notebooks)
    if nb is not None and nb["html"].exists():
        links.append(f'<a href="{_rel(nb["html"], report_dir)}">made by {html.escape(nb["name"])}</a>')
    body = ""
    if ".png" in by_ext:
        src = _rel(copies / by_ext[".png"].relative_to(figures), report_dir)
        body = f'<img src="{src}" alt="{html.escape(label or stem)}">'
    elif ".csv" in by_ext:
        caption = _caption(by_ext.get(".md"))
        df = _read_csv(by_ext[".csv"])
        body = (f"<p>{html.escape(caption)}</p>" if caption else "") + (html_table(df) if df is not None else "")
    anchor = re.sub(r"[^A-Za-z0-9_-]", "-", stem)
    return (f'<div class="item" id="{anchor}"><h3>{title}</h3>{body}'
            f'<div class="links">{"".join(links)}</div></div>')
