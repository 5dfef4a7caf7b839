"""``make reproduce``: execute the notebooks in order with papermill, render them to HTML, write the report site.

For each notebook ``notebooks/NN_*.ipynb`` this writes ``reports/<name>/NN_*.ipynb`` (executed),
``reports/<name>/NN_*.html`` and ``reports/<name>/logs/NN_*.log`` (library warnings, progress bars: what the
kernel would otherwise print as stderr), then ``reports/<name>/index.html`` (cft_utils.report.site). ``<name>``
is the profile, or ``<profile>-<hash of the overrides>`` when ``--set`` overrides are given, so a run with
overrides writes beside, never over, the default reports, results and figures.

The notebooks themselves write results under ``results/<name>/``, figures and tables under ``figures/<name>/``
and heavy artifacts under ``$CFT_HOME``. Every expensive stage inside a notebook is skipped when its run is
already complete, so a second ``make reproduce`` is quick, and an interrupted one resumes.

While a notebook runs, one status line says which cell runs (counter, elapsed time, the Markdown heading it
sits under); lines the notebook prints about runs being reused or trained are echoed. A notebook that fails
keeps its partly executed ``.ipynb`` and ``.html`` (the error shown where it happened); the remaining
notebooks are skipped and the exit status is non-zero.

    python -m cft_utils.reproduce --profile sandbox [--only 01 02] [--set KEY=VALUE ...] [--timeout 3600]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

from .io import apply_umask, atomic_path
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

ENGINE_NAME = "cft-progress"
# Printed lines about runs (the executor's one line per run, other reused/trained lines) that are echoed to the
# terminal while a notebook runs.
RUN_STATUS = re.compile(r"^\s*\[executor\]|\b(reused|trained in|resumed)\b", re.IGNORECASE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def cell_headings(nb) -> list[str]:
    """For each cell, the text of the last Markdown heading at or above it ('' before the first)."""
    out, current = [], ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found = _HEADING.findall(cell.source)
            if found:
                current = re.sub(r"[*_`]", "", found[-1]).strip()
        out.append(current)
    return out


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One live status line per notebook: ``cell 5/12  2:31  (this cell 0:40)  <heading>``.

    On a terminal the line is redrawn every second; elsewhere (CI logs, pipes) one line is printed per code
    cell as it starts. Lines about runs printed by the notebook (``RUN_STATUS``) are echoed on their own line.
    """

    def __init__(self, name: str, nb, stream=None, live: bool | None = None, interval: float = 1.0):
        self.name = name
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval
        self.headings = cell_headings(nb)
        self.code_index = {}
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                self.code_index[i] = len(self.code_index) + 1
        self.n_code = len(self.code_index)
        self.t0 = time.time()
        self.cell_t0 = self.t0
        self.current: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._width = 0
        self._partial = ""

    def line(self) -> str:
        """The current status text."""
        now = time.time()
        if self.current is None:
            return f"[reproduce] {self.name}  starting the kernel  {_clock(now - self.t0)}"
        k = self.code_index.get(self.current, 0)
        heading = self.headings[self.current] if self.current < len(self.headings) else ""
        if len(heading) > 60:
            heading = heading[:59] + "…"
        this = f"  (this cell {_clock(now - self.cell_t0)})" if self.live else ""
        return f"[reproduce] {self.name}  cell {k}/{self.n_code}  {_clock(now - self.t0)}{this}  {heading}".rstrip()

    def _draw(self):
        text = self.line()
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def _clear(self):
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def _tick(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                self._draw()

    def start(self):
        """Begin reporting (starts the redraw thread on a terminal)."""
        if self.live:
            with self._lock:
                self._draw()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def cell_start(self, index: int):
        """A cell starts: update the line (or print one, off a terminal)."""
        with self._lock:
            self.current, self.cell_t0 = index, time.time()
            if index not in self.code_index:
                return
            if self.live:
                self._draw()
            else:
                print(self.line(), file=self.stream, flush=True)

    def echo(self, text: str):
        """Print a line the notebook wrote (a run status) above the live line."""
        with self._lock:
            self._clear()
            print(f"[reproduce]   {text.rstrip()}", file=self.stream, flush=True)
            if self.live:
                self._draw()

    def write(self, text: str):
        """File-like sink for the kernel's stdout: echoes complete lines matching ``RUN_STATUS``."""
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for ln in lines:
            if RUN_STATUS.search(ln):
                self.echo(ln)

    def flush(self):
        """File-like no-op."""

    def stop(self):
        """Stop the redraw thread and clear the live line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._clear()
            self.stream.flush()


def _register_engine():
    """Register a papermill engine that reports each cell start to the ``progress`` engine argument."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress=None, **kwargs):
            if progress is not None:
                original = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    if cell_index is not None:
                        progress.cell_start(cell_index)
                    return original(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
                kwargs["stdout_file"] = progress
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE_NAME, ProgressEngine)


class NotebookFailed(RuntimeError):
    """A notebook raised; the partly executed copy and its HTML are kept at ``path``."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


# JupyterLab's HTML template without the scripts it fetches from a CDN (require.js, MathJax, mermaid): a report
# opened offline, from a zip file, then loads nothing from the network and logs no failed requests. The
# notebooks use no LaTeX math and no mermaid diagrams; figures are embedded as data: URIs.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock html_head_js_requirejs %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
"""


def render_html(ipynb: Path) -> Path:
    """Render an executed notebook to a self-contained, offline HTML file beside it (figures embedded)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    quiet = logging.getLogger("cft_utils.reproduce.nbconvert")
    quiet.setLevel(logging.ERROR)  # not "Alternative text is missing on 1 image(s)" for every figure
    exporter = HTMLExporter(extra_loaders=[DictLoader({"cft_offline.html.j2": OFFLINE_TEMPLATE})],
                            template_file="cft_offline.html.j2", log=quiet)
    html, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    out = ipynb.with_suffix(".html")
    with atomic_path(out, suffix=".html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


def _note_interruption(path: Path, exc: BaseException) -> None:
    """Put a Markdown cell at the top of a partly executed notebook saying why it stopped."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    msg = f"**Execution stopped**: {type(exc).__name__}: {exc}".strip()
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(f'<span style="color:red">{msg}</span>'))
    nbformat.write(nb, path)


def execute_notebook(name: str, profile: str, out_dir: Path, timeout: int | None = None,
                     parameters: dict | None = None, overrides: dict | None = None,
                     progress: bool | None = True, log_dir: Path | None = None) -> Path:
    """Run one notebook with papermill (parameters injected after its ``parameters`` cell) and render HTML.

    ``name``: a file name under notebooks/ (or an absolute path to a notebook elsewhere).
    ``overrides`` go to the notebook's ``overrides`` parameter. The kernel's library logs go to
    ``<log_dir or out_dir/logs>/<notebook>.log``. ``progress``: True reports on stdout (live on a terminal),
    False is silent. A failing notebook raises :class:`NotebookFailed` after writing its partial copy and HTML.
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from .notebook import LOG_FILE_ENV, QUIET_ENV
    from .setup_env import ensure_kernel

    kernel = ensure_kernel()
    _register_engine()
    src = Path(name) if Path(name).is_absolute() else NOTEBOOKS_DIR / name
    out = Path(out_dir) / src.name
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(log_dir or out.parent / "logs") / (out.stem + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)  # this run's log only
    params = {"profile": profile, **(parameters or {})}
    if overrides:
        params["overrides"] = dict(overrides)
    reporter = Progress(out.stem, nbformat.read(src, as_version=4)) if progress else None
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    saved_env = {k: os.environ.get(k) for k in [LOG_FILE_ENV, *QUIET_ENV]}
    os.environ[LOG_FILE_ENV] = str(log.resolve())
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    failure: BaseException | None = None
    try:
        if reporter:
            reporter.start()
        pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=kernel, cwd=str(src.parent),
                            execution_timeout=timeout, progress_bar=False, report_mode=False,
                            engine_name=ENGINE_NAME, progress=reporter,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except PapermillExecutionError as e:
        failure = e
    except BaseException as e:  # a timeout, a dead kernel, Ctrl-C: keep what ran, then re-raise
        failure = e
        if tmp.exists():
            _note_interruption(tmp, e)
    finally:
        if reporter:
            reporter.stop()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if tmp.exists():
        apply_umask(tmp)
        os.replace(tmp, out)
        render_html(out)
    else:  # nothing ran: do not leave an older report looking like this run's
        for stale in (out, out.with_suffix(".html")):
            stale.unlink(missing_ok=True)
    if isinstance(failure, PapermillExecutionError):
        raise NotebookFailed(out, f"{name} failed at cell In [{failure.exec_count}]: {failure.ename}: "
                                  f"{failure.evalue}") from failure
    if isinstance(failure, Exception):
        raise NotebookFailed(out, f"{name} stopped: {type(failure).__name__}: {failure}") from failure
    if failure is not None:  # KeyboardInterrupt, SystemExit
        raise failure
    return out


def output_name(profile: str, overrides: dict | None) -> str:
    """The folder name of this run's reports, results and figures (the config's ``output_name``)."""
    from .config import load_config

    return load_config(profile, overrides or {}).output_name


def select(only: list[str] | None) -> list[str]:
    """The notebooks whose names start with one of ``only`` (all when empty); unknown prefixes raise."""
    if not only:
        return list(NOTEBOOKS)
    unknown = [p for p in only if not any(n.startswith(p) for n in NOTEBOOKS)]
    if unknown:
        raise ValueError(f"no notebook starts with {unknown}; notebooks: {', '.join(NOTEBOOKS)}")
    return [n for n in NOTEBOOKS if any(n.startswith(p) for p in only)]


def main(argv: list[str] | None = None) -> int:
    """Command line: execute the selected notebooks, then write the report site; non-zero on failure."""
    ap = argparse.ArgumentParser(description="Execute the compendium's notebooks with papermill.")
    ap.add_argument("--profile", default="sandbox")
    ap.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 01 02")
    ap.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter in every notebook, e.g. mitigation.seed=1 (repeatable; values "
                    "are YAML: [1,5,10])")
    ap.add_argument("--out", default=None, help="output folder (default reports/<name>)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--no-site", action="store_true", help="do not write reports/<name>/index.html")
    args = ap.parse_args(argv)
    from .config import ConfigError, parse_set

    try:
        overrides = parse_set(args.set_)
        todo = select(args.only)
        name = output_name(args.profile, overrides)
        start = home_at_start(args.profile, overrides)  # also checks the parameter file before any notebook runs
    except (ValueError, ConfigError) as e:
        ap.error(str(e))
    out_dir = Path(args.out) if args.out else PROJECT_ROOT / "reports" / name
    if overrides:
        print(f"[reproduce] overrides {overrides} -> reports/, results/, figures/ under '{name}'", flush=True)
    t_all, status = time.time(), 0
    cpu_all, timings = _cpu_seconds(), []
    for i, nb_name in enumerate(todo):
        t, cpu = time.time(), _cpu_seconds()
        print(f"[reproduce] {nb_name} ({args.profile}) ...", flush=True)
        try:
            execute_notebook(nb_name, args.profile, out_dir, args.timeout, overrides=overrides)
            timings.append({"notebook": nb_name, "wall_s": round(time.time() - t, 1),
                            "cpu_s": round(_cpu_seconds() - cpu, 1)})
        except NotebookFailed as e:
            status = 1
            print(f"[reproduce] FAILED: {e}\n[reproduce] partly executed copy: {e.path} and "
                  f"{e.path.with_suffix('.html')}; log: {out_dir / 'logs' / (e.path.stem + '.log')}", flush=True)
            if todo[i + 1:]:
                print(f"[reproduce] skipped: {', '.join(todo[i + 1:])}", flush=True)
            break
        print(f"[reproduce] {nb_name} done in {_clock(time.time() - t)} -> {out_dir / nb_name}", flush=True)
    if not args.no_site:
        from .report.site import write_site

        index = write_site(out_dir, args.profile, overrides=overrides, name=name)
        print(f"[reproduce] report site: {index}", flush=True)
    verdict = "failed" if status else "all done"
    wall, cpu = time.time() - t_all, _cpu_seconds() - cpu_all
    write_timing(out_dir, timings, wall, cpu, complete=not status and todo == list(NOTEBOOKS), start=start)
    print(f"[reproduce] {verdict} in {_clock(wall)} (CPU time {_clock(cpu)}, {cpu / max(wall, 1e-9):.2f}x wall on "
          f"{os.cpu_count()} cores); reports in {out_dir}", flush=True)
    return status


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of every finished child (kernels, their workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def home_at_start(profile: str, overrides: dict) -> dict:
    """What ``$CFT_HOME`` held before a run: whether the sandbox's pre-trained base model was built (None outside
    the sandbox: real base models come from the hub cache) and how many finished runs it held. Timings say which
    start they measure: from an empty home, the base model's pre-training is part of them."""
    from .config import load_config
    from .paths import cft_home

    cfg = load_config(profile, overrides)
    base = None
    if cfg.sandbox is not None:
        from .sandbox.build import sandbox_paths

        base = (sandbox_paths(cfg)["base"] / "DONE").exists()
    runs = cft_home() / "runs"
    done = sum(1 for d in runs.iterdir() if (d / "DONE").exists()) if runs.is_dir() else 0
    return {"base_model_built": base, "runs_done": done}


def write_timing(out_dir: Path, timings: list[dict], wall: float, cpu: float, complete: bool,
                 start: dict | None = None) -> Path:
    """``reports/<name>/timing.json``: wall and CPU seconds per notebook and in all (read by bench/bench_reproduce.py
    and the README), and what CFT_HOME held at the start (:func:`home_at_start`). CPU time counts finished child
    processes, so a notebook's workers count once they exit."""
    import platform

    from .io import write_json
    from .runs import git

    out = Path(out_dir) / "timing.json"
    data = {"notebooks": timings, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_over_wall": round(cpu / max(wall, 1e-9), 2), "cores": os.cpu_count(), "complete": complete,
            "machine": platform.processor() or platform.machine(), "load_avg_end": [round(x, 2) for x in
                                                                                  os.getloadavg()],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git("rev-parse", "--short", "HEAD") or None,
            "home_at_start": start}
    write_json(out, data)
    return out


if __name__ == "__main__":
    from .processes import skip_exit_collection

    skip_exit_collection()  # ~1 s less at exit (cft_utils.processes)
    sys.exit(main())
