"""The paper's evaluation tables from the tidy results: Tables 1, 2, A1, A2 (suite averages, P1 vs P2) and
B3, B4, B5 (per language), with the paper's values beside ours where the paper has values for the models, and a
computed check of the paper's direction.

The paper's direction (its §3.2 and App. C): Phase 2 on data *similar* to Phase 1 keeps English task ability,
on *dissimilar* data loses it; language ability rises. Whether a Phase 2 cell is similar is measured, not
assumed: :func:`task_overlap_similarity` compares the task-type distributions of the two phases' datasets
(histogram intersection, in [0, 1]) where the records name their task (the sandbox); elsewhere it is unknown
and the check says so.

A benchmark's value in a table is its headline metric (``evaluation.benchmarks.<name>.metric``), averaged over
its languages; an average over benchmarks or languages is NaN (missing) when any part is missing, never an
average of what happens to be there. The paper's values stand beside ours wherever the paper has values for the
profile's models (:func:`with_paper_values`): no profile switch.

Also the XL-Sum tokenizer check (:func:`rouge_tokenizer_report`): does ``rouge_score``'s default tokenizer, which
the paper's XL-Sum numbers likely used, score every non-Latin script of the paper's languages (Arabic, Devanagari,
Chinese, Japanese) as nothing?
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import ExperimentConfig
from ..outputs import save_table
from ..paper import paper_values
from ..paths import figures_dir, results_dir
from ..sandbox.world import SANDBOX_DATASETS, world_for
from .metrics import dominant_script, rouge_scores, tokenize
from .runner import checkpoints_of, output_text, plan_cells, read_samples

#: The paper's tables: what each shows. ``phase2_data`` selects the grid cells (dataset keys).
TABLES = {
    "table1": {"kind": "suite", "suite": "ta", "phase2_data": "multialpaca", "paper": "1",
               "title": "Table 1: task ability (English) before (P1) and after (P2) Phase 2 on MultiAlpaca"},
    "table2": {"kind": "suite", "suite": "la", "phase2_data": "multialpaca", "paper": "2",
               "title": "Table 2: language ability (average over languages), P1 vs P2, Phase 2 on MultiAlpaca"},
    "tableA1": {"kind": "suite", "suite": "ta", "phase2_data": "mopenorca", "paper": "A1",
                "title": "Table A1: task ability (English), P1 vs P2, Phase 2 on mOpenOrca"},
    "tableA2": {"kind": "suite", "suite": "la", "phase2_data": "mopenorca", "paper": "A2",
                "title": "Table A2: language ability (average over languages), P1 vs P2, Phase 2 on mOpenOrca"},
    "tableB3": {"kind": "languages", "suite": "la", "benchmark": "MLQA", "paper": "B3",
                "title": "Table B3: MLQA per language (F1), P1 vs P2"},
    "tableB4": {"kind": "languages", "suite": "la", "benchmark": "XLSum", "paper": "B4",
                "title": "Table B4: XL-Sum per language (ROUGE-L), P1 vs P2"},
    "tableB5": {"kind": "languages", "suite": "la", "benchmark": "XQuAD", "paper": "B5",
                "title": "Table B5: XQuAD per language (F1), P1 vs P2"},
}
AVG_NAME = {"ta": "TA_avg", "la": "LA_avg"}
CELL = ["model", "phase1_data", "phase2_data", "checkpoint"]


def _mean_or_nan(values) -> float:
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return float("nan")
    return sum(vals) / len(vals)


def headline(cfg: ExperimentConfig, tidy: pd.DataFrame, strategy: str = "none") -> pd.DataFrame:
    """One row per (cell, checkpoint, benchmark, language): the benchmark's headline metric (NaN if missing)."""
    rows = []
    want = {(b, lang) for b, spec in cfg.evaluation.benchmarks.items() for lang in spec.tasks}
    t = tidy[tidy["strategy"] == strategy]
    for name, spec in cfg.evaluation.benchmarks.items():
        sub = t[(t["benchmark"] == name) & (t["metric"] == spec.metric)]
        rows.append(sub)
    out = pd.concat(rows) if rows else tidy.iloc[0:0]
    out = out[[(b, lang) in want for b, lang in zip(out["benchmark"], out["language"], strict=True)]]
    return mean_over_seeds(out, CELL + ["benchmark", "language"])


def mean_over_seeds(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per ``keys``: the value averaged over training seeds (NaN when any seed's value is missing), with
    ``n_seeds``. A checkpoint shared by several seeds' cells (an off-the-shelf P1) counts once per seed."""
    if rows.empty:
        return rows.assign(n_seeds=pd.Series(dtype=int))
    rows = rows.drop_duplicates(keys + (["seed"] if "seed" in rows.columns else []))
    g = rows.groupby(keys, dropna=False, sort=False)
    first = g.first().reset_index()
    first["value"] = g["value"].agg(lambda v: v.mean() if v.notna().all() else math.nan).to_numpy()
    first["n_seeds"] = g.size().to_numpy()
    return first


def _cells(cfg: ExperimentConfig, phase2_data: str | None = None) -> list[tuple[str, str, str]]:
    """The grid's Phase 2 cells (model, phase1 data, phase2 data) in the parameter file's order."""
    cells = [(m, c.phase1, c.data) for m in cfg.grid.models for c in cfg.grid.phase2]
    return [c for c in cells if phase2_data is None or c[2] == phase2_data]


def _frame(cells) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "phase1_data": p1, "phase2_data": p2, "checkpoint": ck}
                         for m, p1, p2 in cells for ck in ("P1", "P2")], columns=CELL)


def suite_table(cfg: ExperimentConfig, tidy: pd.DataFrame, suite: str, phase2_data: str,
                strategy: str = "none") -> pd.DataFrame:
    """Wide table: one row per (cell, P1|P2), one column per benchmark of ``suite`` (headline metric, mean over
    languages) and the suite average (``TA_avg``/``LA_avg``)."""
    h = headline(cfg, tidy, strategy)
    benches = [b for b, s in cfg.evaluation.benchmarks.items() if s.suite == suite]
    table = _frame(_cells(cfg, phase2_data))
    for b in benches:
        langs = list(cfg.evaluation.benchmarks[b].tasks)
        vals = []
        for _, r in table.iterrows():
            sel = h[(h.model == r.model) & (h.phase1_data == r.phase1_data) & (h.phase2_data == r.phase2_data)
                    & (h.checkpoint == r.checkpoint) & (h.benchmark == b)]
            by_lang = dict(zip(sel.language, sel.value, strict=True))
            vals.append(_mean_or_nan([by_lang.get(lang, float("nan")) for lang in langs]))
        table[b] = vals
    table[AVG_NAME[suite]] = [_mean_or_nan(row) for row in table[benches].itertuples(index=False)]
    return table


def language_table(cfg: ExperimentConfig, tidy: pd.DataFrame, benchmark: str, strategy: str = "none"
                   ) -> pd.DataFrame:
    """Wide table: one row per (cell, P1|P2) of the whole grid, one column per language of ``benchmark``
    (headline metric) and their average ``avg``."""
    if benchmark not in cfg.evaluation.benchmarks:
        raise KeyError(f"no benchmark {benchmark!r} in evaluation.benchmarks ({list(cfg.evaluation.benchmarks)})")
    h = headline(cfg, tidy, strategy)
    h = h[h.benchmark == benchmark]
    langs = list(cfg.evaluation.benchmarks[benchmark].tasks)
    table = _frame(_cells(cfg))
    for lang in langs:
        vals = []
        for _, r in table.iterrows():
            sel = h[(h.model == r.model) & (h.phase1_data == r.phase1_data) & (h.phase2_data == r.phase2_data)
                    & (h.checkpoint == r.checkpoint) & (h.language == lang)]
            vals.append(float(sel.value.iloc[0]) if len(sel) else float("nan"))
        table[lang] = vals
    table["avg"] = [_mean_or_nan(row) for row in table[langs].itertuples(index=False)]
    return table


# ------------------------------------------------------------------------------------------------ paper values


def with_paper_values(table: pd.DataFrame, paper_table: str, value_columns: list[str], benchmark: str | None = None,
                      path=None) -> pd.DataFrame:
    """Put the paper's value beside each of our values (``<column> (paper)``), for the rows the paper has
    (matched on model, Phase 1 data, Phase 2 data, checkpoint). Returns ``table`` unchanged when the paper has no
    value for any of its models (the sandbox)."""
    paper = paper_values(paper_table, path=path, dataset_keys=True)
    if benchmark is not None:
        paper = paper[paper.benchmark == benchmark]
        paper = paper.assign(column=paper.language)
    else:
        paper = paper.assign(column=paper.benchmark)
    paper = paper[paper.model.isin(set(table.model))]
    if paper.empty:
        return table
    out = table.copy()
    cols = []
    for c in value_columns:
        sub = paper[paper.column == c][["model", "phase1_data", "phase2_data", "checkpoint", "value"]]
        sub = sub.drop_duplicates(["model", "phase1_data", "phase2_data", "checkpoint"])
        out = out.merge(sub.rename(columns={"value": f"{c} (paper)"}), how="left",
                        on=["model", "phase1_data", "phase2_data", "checkpoint"])
        cols += [c, f"{c} (paper)"]
    return out[CELL + cols]


# ------------------------------------------------------------------------------------------------ similarity


def _task_counts(world, name: str) -> Counter | None:
    for cand in (f"{name}_en", name):  # a multilingual set's English originals carry its task mix
        if cand in SANDBOX_DATASETS or cand == "instruct":
            try:
                recs = world.dataset(cand)
            except (ValueError, KeyError):
                continue
            tasks = [r.get("task") for r in recs]
            if tasks and all(tasks):
                return Counter(tasks)
    return None


def task_overlap_similarity(cfg: ExperimentConfig, threshold: float = 0.5) -> pd.DataFrame:
    """Per Phase 2 cell: the overlap of the task-type distributions of its Phase 1 and Phase 2 data
    (sum over task types of the smaller share; 1 = the same tasks in the same proportions) and ``similar`` =
    overlap >= ``threshold``. Needs records that name their task (the sandbox world); else NaN / None."""
    rows = []
    world = None if cfg.sandbox is None else world_for(cfg.sandbox.world_spec())
    for m, p1, p2 in _cells(cfg):
        overlap = float("nan")
        if world is not None:
            n1 = "instruct" if p1 == "Instruct" else (cfg.datasets[p1].name or p1)
            n2 = cfg.datasets[p2].name or p2
            c1, c2 = _task_counts(world, n1), _task_counts(world, n2)
            if c1 and c2:
                t1, t2 = sum(c1.values()), sum(c2.values())
                overlap = sum(min(c1[t] / t1, c2[t] / t2) for t in set(c1) | set(c2))
        rows.append({"model": m, "phase1_data": p1, "phase2_data": p2, "task_overlap": overlap,
                     "similar": None if math.isnan(overlap) else bool(overlap >= threshold)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ direction


def _delta_rows(table: pd.DataFrame, value: str) -> pd.DataFrame:
    p1 = table[table.checkpoint == "P1"].set_index(["model", "phase1_data", "phase2_data"])[value]
    p2 = table[table.checkpoint == "P2"].set_index(["model", "phase1_data", "phase2_data"])[value]
    d = pd.DataFrame({"P1": p1, "P2": p2})
    d["delta"] = d.P2 - d.P1
    return d.reset_index()


def direction_check(table: pd.DataFrame, suite: str, similarity: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cell: P1, P2 and the change of the suite average, with the measured similarity of the cell and what the
    paper expects ('kept' for similar data and 'lost' for dissimilar data in TA; 'rises' in LA). No verdict here:
    a difference of two means decides nothing without its interval; cft_utils.analysis.claims decides."""
    d = _delta_rows(table, AVG_NAME[suite])
    if similarity is not None:
        d = d.merge(similarity[["model", "phase1_data", "phase2_data", "task_overlap", "similar"]], how="left",
                    on=["model", "phase1_data", "phase2_data"])
    else:
        d["task_overlap"], d["similar"] = float("nan"), None
    if suite == "ta":
        d["expected"] = [None if _tri(v) is None else ("kept" if _tri(v) else "lost") for v in d["similar"]]
    else:
        d["expected"] = "rises"
    return d


def language_direction(table: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Per cell: the change of the average over languages and in how many languages P2 is above P1."""
    rows = []
    d = _delta_rows(table, "avg")
    for _, r in d.iterrows():
        key = (table.model == r.model) & (table.phase1_data == r.phase1_data) & (table.phase2_data == r.phase2_data)
        p1, p2 = table[key & (table.checkpoint == "P1")], table[key & (table.checkpoint == "P2")]
        up = sum(float(p2[lang].iloc[0]) > float(p1[lang].iloc[0]) for lang in languages)
        rows.append({"model": r.model, "phase1_data": r.phase1_data, "phase2_data": r.phase2_data, "P1": r.P1,
                     "P2": r.P2, "delta": r.delta, "languages_up": int(up), "languages": len(languages),
                     "expected": "rises"})
    return pd.DataFrame(rows)


def _tri(v) -> bool | None:
    """True / False / None (missing: None or NaN, as pandas may store it)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return bool(v)


def direction_text(check: pd.DataFrame, suite: str | None) -> str:
    """One sentence per cell with the numbers (means over seeds) and what the paper expects; the verdicts, decided
    by intervals over test items and seeds, are in the claims table (results/<name>/claims.csv)."""
    if suite == "ta":
        head = "Paper's direction: Phase 2 on similar data keeps task ability, on dissimilar data loses it."
    else:
        head = "Paper's direction: Phase 2 raises language ability."
    parts = []
    for _, r in check.iterrows():
        cell = f"{r.phase1_data}→{r.phase2_data} ({r.model})"
        if "task_overlap" in r and not (isinstance(r.task_overlap, float) and math.isnan(r.task_overlap)):
            cell += f", {'similar' if _tri(r.similar) else 'dissimilar'} (task overlap {r.task_overlap:.2f})"
        nums = f"{r.P1:.3f} → {r.P2:.3f} ({r.delta:+.3f})" if not math.isnan(r.delta) else "missing values"
        extra = f", higher in {r.languages_up}/{r.languages} languages" if "languages_up" in r else ""
        exp = f"; the paper expects it to be {r.expected}" if r.get("expected") else ""
        parts.append(f"{cell}: {nums}{extra}{exp}.")
    return " ".join([head, *parts, "Verdicts with 95 % intervals over test items and seeds: the claims table."])


# ------------------------------------------------------------------------------------------------ rendering


def render_tables(cfg: ExperimentConfig, tidy: pd.DataFrame, names: list[str], out_dir: Path,
                  similarity: pd.DataFrame | None = None, strategy: str = "none") -> dict[str, dict]:
    """Render the named tables (keys of :data:`TABLES`) as CSV/Markdown/LaTeX under ``out_dir`` with the paper's
    values beside ours where it has them; the caption gives the changes and what the paper expects.
    Returns ``{name: {"table", "direction", "text", "paths"}}``."""
    out = {}
    for name in names:
        spec = TABLES[name]
        if spec["kind"] == "suite":
            if spec["phase2_data"] not in {c.data for c in cfg.grid.phase2}:
                continue
            t = suite_table(cfg, tidy, spec["suite"], spec["phase2_data"], strategy)
            value_cols = [c for c in t.columns if c not in CELL]
            check = direction_check(t, spec["suite"], similarity)
            text = direction_text(check, spec["suite"])
            shown = with_paper_values(t, spec["paper"], value_cols)
        else:
            if spec["benchmark"] not in cfg.evaluation.benchmarks:
                continue
            t = language_table(cfg, tidy, spec["benchmark"], strategy)
            langs = list(cfg.evaluation.benchmarks[spec["benchmark"]].tasks)
            check = language_direction(t, langs)
            text = direction_text(check, None)
            shown = with_paper_values(t, spec["paper"], [*langs, "avg"], benchmark=spec["benchmark"])
        paths = save_table(shown, Path(out_dir) / name, caption=f"{spec['title']}. {text}")
        out[name] = {"table": shown, "direction": check, "text": text, "paths": paths}
    return out


def render_suite(cfg: ExperimentConfig, tidy: pd.DataFrame, suite: str, out_dir: Path | None = None,
                 similarity: pd.DataFrame | None = None, strategy: str = "none") -> dict[str, dict]:
    """Render every table of one suite (``ta``: Tables 1 and A1; ``la``: Tables 2, A2 and B3-B5) into ``out_dir``
    (default ``figures/<output name>/``); see :func:`render_tables`."""
    names = [n for n, spec in TABLES.items() if spec["suite"] == suite]
    if not names:
        raise ValueError(f"no tables for suite {suite!r}; suites: {sorted({t['suite'] for t in TABLES.values()})}")
    return render_tables(cfg, tidy, names, figures_dir(cfg) if out_dir is None else out_dir, similarity, strategy)


def show(rendered: dict[str, dict]) -> None:
    """Print each rendered table's direction sentence and display the table (inline in a notebook)."""
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        display = print
    for name, t in rendered.items():
        print(f"{name}: {t['text']}\n")
        display(t["table"])


# ------------------------------------------------------------------------------------------------ ROUGE check

#: One sentence per XL-Sum language of the paper, in its own script (our own wording, not XL-Sum text): what
#: ``rouge_score``'s default tokenizer keeps of each script, measured without any model output.
SCRIPT_SAMPLES = {
    "arabic": "ذهب الولد إلى السوق صباحا واشترى خبزا طازجا",
    "chinese_simplified": "今天早上男孩去市场买了新鲜的面包",
    "french": "ce matin le garçon est allé au marché acheter du pain frais",
    "hindi": "आज सुबह लड़का बाज़ार गया और ताज़ी रोटी ख़रीदी",
    "japanese": "今朝その少年は市場へ行って新しいパンを買いました",
    "spanish": "esta mañana el niño fue al mercado a comprar pan fresco",
}
COMPARISON_COLUMNS = ["run", "checkpoint", "language", "script", "n", "rougeL_unicode", "rougeL_default",
                      "perfect_default", "default_token_share"]


def _default_tokenizer():
    """``rouge_score``'s ROUGE-L scorer with its default tokenizer, and that tokenizer."""
    from rouge_score.rouge_scorer import RougeScorer
    from rouge_score.tokenizers import DefaultTokenizer

    return RougeScorer(["rougeL"], use_stemmer=False), DefaultTokenizer(use_stemmer=False)


def _kept_share(text: str, tokenizer) -> float:
    """Share of the Unicode word tokens of ``text`` that the default tokenizer keeps intact."""
    kept = set(tokenizer.tokenize(text))
    words = tokenize(text)
    return sum(w in kept for w in words) / len(words) if words else float("nan")


def script_check(samples: dict[str, str] | None = None) -> pd.DataFrame:
    """Per language of the paper's XL-Sum (:data:`SCRIPT_SAMPLES`): its script, the share of its words that
    ``rouge_score``'s default tokenizer keeps, and the default-tokenizer ROUGE-L of a text against itself (1.0 for a
    sound tokenizer, 0 when nothing survives)."""
    scorer, tok = _default_tokenizer()
    rows = [{"language": lang, "script": dominant_script(text), "default_token_share": _kept_share(text, tok),
             "perfect_default": scorer.score(text, text)["rougeL"].fmeasure}
            for lang, text in (SCRIPT_SAMPLES if samples is None else samples).items()]
    return pd.DataFrame(rows, columns=["language", "script", "default_token_share", "perfect_default"])


def rouge_tokenizer_comparison(cfg: ExperimentConfig, runs, benchmark: str = "XLSum") -> pd.DataFrame:
    """ROUGE-L of the logged summaries with the Unicode tokenizer (ours) and with ``rouge_score``'s default
    tokenizer (``[a-z0-9]`` only), per checkpoint and language; ``script`` is the references' dominant script,
    ``perfect_default`` scores each reference against itself with the default tokenizer (1.0 for a sound tokenizer,
    0 when it keeps no token) and ``default_token_share`` is the share of the reference's (Unicode) tokens the
    default tokenizer keeps intact. From the evaluation caches."""
    scorer, tok = _default_tokenizer()
    spec = cfg.evaluation.benchmarks[benchmark]
    rows, seen = [], set()
    for ckpt, run, _cell in checkpoints_of(runs):
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        for lang, task in spec.tasks.items():
            samples = read_samples(run, task, spec.limit)
            if not samples:
                continue
            uni, dft, perfect, share = [], [], [], []
            for s in samples:
                ref, out = s["doc"]["summary"], output_text(s).strip()
                uni.append(rouge_scores(out, ref, ("rougeL",))["rougeL"])
                dft.append(scorer.score(ref, out)["rougeL"].fmeasure)
                perfect.append(scorer.score(ref, ref)["rougeL"].fmeasure)
                share.append(_kept_share(ref, tok))
            rows.append({"run": run.name, "checkpoint": ckpt, "language": lang,
                         "script": dominant_script(" ".join(s["doc"]["summary"] for s in samples)), "n": len(samples),
                         "rougeL_unicode": sum(uni) / len(uni), "rougeL_default": sum(dft) / len(dft),
                         "perfect_default": sum(perfect) / len(perfect),
                         "default_token_share": sum(share) / len(share)})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _names(items) -> str:
    return ", ".join(str(i) for i in items) or "none"


def rouge_tokenizer_note(comparison: pd.DataFrame, path=None, scripts: pd.DataFrame | None = None) -> str:
    """A computed statement in three parts.

    1. Every script of the paper's XL-Sum languages (:func:`script_check`): which ones ``rouge_score``'s default
       tokenizer erases (a perfect summary scores about 0 there).
    2. Our logged summaries (``comparison``): the same for the scripts of our languages, and our ROUGE-L with both
       tokenizers.
    3. The paper's Table B4 like with like: its numbers (by all signs default-tokenizer ROUGE) for each non-Latin
       language against its Latin-script languages, beside our *default-tokenizer* ROUGE-L where we have the same
       language, and the same non-Latin/Latin ratio for our own languages.
    """
    scripts = script_check() if scripts is None else scripts
    erased = scripts[scripts.perfect_default < 0.5]
    fine = scripts[scripts.perfect_default >= 0.5]
    if len(erased):
        parts = [f"rouge_score's default tokenizer keeps {erased.default_token_share.mean():.0%} of the words of a "
                 f"sentence in {_names(f'{r.language} ({r.script})' for r in erased.itertuples())}, so a perfect "
                 f"summary scores at most {erased.perfect_default.max():.3f} there, against "
                 f"{fine.default_token_share.mean():.0%} of the words in "
                 f"{_names(f'{r.language} ({r.script})' for r in fine.itertuples())}."]
    else:
        parts = ["rouge_score's default tokenizer keeps the words of every script of the paper's XL-Sum languages: "
                 "no sign of the bug."]
    ours = None
    if comparison.empty:
        parts.append("Our own summaries could not be checked: no XL-Sum samples were logged.")
    else:
        ours = comparison.groupby("language").agg(
            script=("script", "first"), perfect_default=("perfect_default", "mean"),
            default_token_share=("default_token_share", "mean"), rougeL_default=("rougeL_default", "mean"),
            rougeL_unicode=("rougeL_unicode", "mean"))
        non_latin, latin = ours[ours.script != "Latin"], ours[ours.script == "Latin"]
        if len(non_latin):
            parts.append(
                f"In our summaries it keeps {non_latin.default_token_share.mean():.0%} of the reference words in "
                f"{_names(f'{k} ({v})' for k, v in non_latin.script.items())} (only Latin-script words and digits "
                f"survive), so a perfect summary scores {non_latin.perfect_default.mean():.3f} there and the models' "
                f"summaries score {non_latin.rougeL_default.mean():.3f} with the default tokenizer against "
                f"{non_latin.rougeL_unicode.mean():.3f} with the Unicode one; in {_names(latin.index)} (Latin) it "
                f"keeps {latin.default_token_share.mean():.0%}.")
        else:
            parts.append(f"All our XL-Sum languages ({_names(ours.index)}) are written in Latin script: our own "
                         "summaries cannot show the bug.")
    try:
        b4 = paper_values("B4", path=path)
    except FileNotFoundError:
        parts.append("The paper's values (data/paper_results.csv) are not available to compare.")
        return " ".join(parts)
    script_of = dict(zip(scripts.language, scripts.script, strict=True))
    b4 = b4.assign(script=b4.language.map(script_of))
    latin_mean = b4[b4.script == "Latin"].value.mean()
    pieces, low, high = [], [], []
    for lang in [x for x in scripts.language if script_of[x] != "Latin"]:
        vals = b4[b4.language == lang].value
        if not len(vals) or math.isnan(latin_mean):
            continue
        ratio = vals.mean() / latin_mean
        ours_same = (f", ours with the default tokenizer {ours.loc[lang, 'rougeL_default']:.3f}"
                     if ours is not None and lang in ours.index else "")
        pieces.append(f"{lang} {vals.mean():.3f} ({ratio:.2f} of Latin{ours_same})")
        (low if ratio < 0.25 and lang in set(erased.language) else high).append(lang)
    if pieces:
        text = (f"The paper's XL-Sum ROUGE (Table B4, mean of its rows) is {'; '.join(pieces)}, against "
                f"{latin_mean:.3f} for its Latin-script languages")
        ours_latin = float("nan") if ours is None else ours[ours.script == "Latin"].rougeL_default.mean()
        if ours_latin > 0 and (ours.script != "Latin").any():  # a ratio needs a Latin-script score above 0
            ours_ratio = ours[ours.script != "Latin"].rougeL_default.mean() / ours_latin
            text += f"; our default-tokenizer ROUGE-L in non-Latin scripts is {ours_ratio:.2f} of that in Latin ones"
        if low:
            text += (f". Below a quarter of the Latin-script value in {_names(low)}: the pattern this bug produces "
                     "(only digits and Latin letters in those outputs are counted), so those numbers likely measure "
                     "the tokenizer, not the summaries")
        if high:
            text += (f". In {_names(high)} not clearly the pattern of this bug (digits and Latin-script names in the "
                     "outputs still score)")
        parts.append(text + ".")
    return " ".join(parts)


@dataclass
class RougeTokenizerReport:
    """The XL-Sum tokenizer check: per-checkpoint comparison, its per-language means, the script check of the
    paper's languages, the computed note and the files written."""

    comparison: pd.DataFrame
    by_language: pd.DataFrame
    scripts: pd.DataFrame
    note: str
    paths: list[Path]


def rouge_tokenizer_report(cfg: ExperimentConfig, out_dir: Path | None = None, path=None) -> RougeTokenizerReport:
    """Score the grid's logged XL-Sum summaries with both tokenizers, check every script of the paper's XL-Sum
    languages, write ``<out_dir>/xlsum_rouge_tokenizers`` (default ``results/<output name>/``) and say what it
    means (:func:`rouge_tokenizer_note`)."""
    comparison = rouge_tokenizer_comparison(cfg, plan_cells(cfg))
    out_dir = results_dir(cfg) if out_dir is None else Path(out_dir)
    paths = save_table(comparison, out_dir / "xlsum_rouge_tokenizers",
                       caption="XL-Sum ROUGE-L with the Unicode and the default tokenizer")
    scripts = script_check()
    by_language = comparison.groupby(["language", "script"])[
        ["default_token_share", "perfect_default", "rougeL_default", "rougeL_unicode"]].mean()
    return RougeTokenizerReport(comparison, by_language, scripts, rouge_tokenizer_note(comparison, path, scripts),
                                paths)


def seed_spread(cfg: ExperimentConfig, tidy: pd.DataFrame, k: float = 3.0, min_gap: float = 0.05,
                strategy: str = "none") -> pd.DataFrame:
    """Seeds that move a benchmark far more than its test items can explain, per trained checkpoint.

    For every (cell, checkpoint, benchmark) with three or more training seeds, each seed's headline value (the mean
    over the benchmark's languages) is compared with the median over the seeds (robust to the one that collapsed).
    ``gap_se`` is that gap in standard errors (the seed's item standard error and the median one, combined). A seed is ``flagged``
    when ``|gap_se| > k`` and ``|gap| >= min_gap``: its run learned something different (a collapse, or an outlier
    upwards), which a mean over seeds would hide. Off-the-shelf checkpoints (one model for every seed) are left
    out."""
    keys = CELL + ["benchmark"]
    t = tidy[(tidy["strategy"] == strategy) & tidy["seed"].notna()]
    per_seed = []
    for name, spec in cfg.evaluation.benchmarks.items():
        sub = t[(t["benchmark"] == name) & (t["metric"] == spec.metric)]
        for key, g in sub.groupby(keys + ["seed"], dropna=False, sort=False):
            g = g.drop_duplicates("language")
            se = math.sqrt(float((g["stderr"].fillna(0.0) ** 2).sum())) / len(g)
            per_seed.append({**dict(zip(keys + ["seed"], key, strict=True)), "value": float(g["value"].mean()),
                             "stderr": se, "run_id": g["run_id"].iloc[0], "n_languages": len(g)})
    rows = []
    if per_seed:
        frame = pd.DataFrame(per_seed)
        for key, g in frame.groupby(keys, dropna=False, sort=False):
            if len(g) < 3 or g["run_id"].nunique() < len(g):  # fewer than 3 seeds, or one model shared by all
                continue
            med, med_se = float(g["value"].median()), float(g["stderr"].median())
            for r in g.itertuples():
                se = math.hypot(r.stderr, med_se)
                gap = r.value - med
                rows.append({**dict(zip(keys, key, strict=True)), "seed": int(float(r.seed)), "value": r.value,
                             "median": med, "gap": gap, "gap_se": gap / se if se > 0 else math.nan,
                             "flagged": bool(se > 0 and abs(gap) > k * se and abs(gap) >= min_gap)})
    cols = keys + ["seed", "value", "median", "gap", "gap_se", "flagged"]
    return pd.DataFrame(rows, columns=cols)


def with_answer_language(spread: pd.DataFrame, probe: pd.DataFrame | None, language: str = "en") -> pd.DataFrame:
    """``spread`` with ``in_language``: the share of the seed's greedy answers to ``language`` prompts that came in
    that language (the sandbox probe of notebook 02, averaged over task families); missing without a probe. A seed
    whose benchmark collapsed and whose answers left English points at answer-language drift."""
    out = spread.copy()
    out["in_language"] = math.nan
    if probe is None or probe.empty or out.empty:
        return out
    p = probe[(probe["language"] == language) & (probe["strategy"] == "none")].copy()
    p["seed"] = pd.to_numeric(p["seed"], errors="coerce")
    share = p.groupby(CELL + ["seed"], dropna=False)["in_language"].mean()
    out["in_language"] = [share.get((r.model, r.phase1_data, r.phase2_data, r.checkpoint, float(r.seed)), math.nan)
                          for r in out.itertuples()]
    return out
