"""A quick forgetting probe on the sandbox world's held-out test items (notebook 02): greedy answers of a checkpoint,
scored by exact match in the prompt's language, by answer match in any language (the task skill) and by the answer's
language (language confusion). The benchmarks proper are in cft_utils.evaluation.
"""

from __future__ import annotations

from ..io import read_json, write_json
from ..languages import language_name
from ..models import generate, load_model, load_tokenizer
from ..outputs import save_figure
from .world import ANSWER_MARK, World, final_answer


def generate_answers(model, tokenizer, records: list[dict], max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy answers to the records' prompts (batched and left-padded by ``replay.hf_generate``)."""
    gens = generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens, batch_size, progress=False)
    return [g.text for g in gens]


def response_language(world: World, text: str) -> str | None:
    """The world language most of ``text``'s words belong to (concept names, shared by all, do not count);
    None when no word is language-specific."""
    words = text.split()
    shared = set(world.facts)
    counts = {"en": sum(1 for w in words if w in world.english_words and w not in shared)}
    for lang in world.lexicon:
        vocab = world.lexicon_words(lang)
        counts[lang] = sum(1 for w in words if w in vocab and w not in shared)
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else None


def exact_match_probe(model_dir, world: World, families=("A", "B", "C"), languages=("en",)) -> list[dict]:
    """A quick check of task ability on held-out test records, per family and language (the benchmarks are
    notebooks 03-04). Three numbers per cell, from greedy responses:

    * ``exact_match``: the final answer (``final_answer``) equals the gold one, in the prompt's language;
    * ``answer_match``: it equals the gold answer rendered in *any* of the world's languages, i.e. the task
      was solved even if the response came in another language;
    * ``in_language``: the share of responses not written in another language than the prompt's
      (``response_language``; answers made only of shared names and digits count as in-language).

    The gap between the first two is *language confusion*: the skill survived, the answer language did not.
    """
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, device="auto")
    all_langs = world.spec.languages
    markers = {lang: world.translate(ANSWER_MARK, lang) for lang in all_langs}
    rows = []
    for fam in families:
        golds = {lang: [final_answer(r["completion"][0]["content"], markers[lang]) for r in world.test_set(fam, lang)]
                 for lang in all_langs}
        for lang in languages:
            recs = world.test_set(fam, lang)
            answers = generate_answers(model, tok, recs)
            em, am, same = [], [], []
            for i, a in enumerate(answers):
                em.append(final_answer(a, markers[lang]) == golds[lang][i])
                am.append(any(final_answer(a, markers[g]) == golds[g][i] for g in all_langs))
                same.append(response_language(world, a) in (lang, None))  # names/digits only: neutral
            n = len(answers)
            rows.append({"family": fam, "language": lang, "exact_match": sum(em) / n, "answer_match": sum(am) / n,
                         "in_language": sum(same) / n, "n": n})
    return rows


def probe_runs(plan, world: World, families=("A", "B", "C"), languages: tuple[str, ...] | None = None):
    """Exact-match probe of every Phase 2 run and its Phase 1 parent (P1 vs P2), as a tidy DataFrame.

    Probes are cached in each run's folder (``probe.json``), so a rerun costs nothing.
    """
    import pandas as pd

    languages = languages or ("en", world.other_languages[0])
    cache: dict[str, list[dict]] = {}

    def probe(run) -> list[dict]:
        key = str(run.model_dir)
        if key not in cache:
            f = run.dir / "probe.json"
            want = {"families": list(families), "languages": list(languages), "version": 3}
            if f.exists() and read_json(f)["config"] == want:
                cache[key] = read_json(f)["rows"]
            else:
                cache[key] = exact_match_probe(run.model_dir, world, families, languages)
                if run.data_key is not None:
                    write_json(f, {"config": want, "rows": cache[key]})
        return cache[key]

    rows = []
    for r in plan.phase2:
        parent = r.parent
        for ckpt, run in (("P1", parent), ("P2", r)):
            for row in probe(run):
                rows.append({"model": r.model, "phase1_data": r.phase1_data, "phase2_data": r.phase2_data,
                             "strategy": r.strategy, "checkpoint": ckpt, "seed": r.seed, **row})
    return pd.DataFrame(rows)


def probe_summary(probe, similarity=None, language: str = "en") -> str:
    """Plain sentences with the probe's numbers, per cell: task skill (``answer_match``, mean over families and
    seeds), strict exact match and the share of answers in ``language``, Phase 1 -> Phase 2. ``similarity`` (the
    measured task overlap per cell, cft_utils.evaluation.tables.task_overlap_similarity) labels each cell similar or
    dissimilar. No verdict here: a probe of a few items has no interval; the claims table decides."""
    d = probe[probe.language == language]
    kind = {}
    if similarity is not None:
        for r in similarity.itertuples():
            kind[(r.phase1_data, r.phase2_data)] = (f"similar, task overlap {r.task_overlap:.2f}" if r.similar
                                                    else f"dissimilar, task overlap {r.task_overlap:.2f}"
                                                    if r.similar is False else "similarity unknown")
    lines = []
    for (m, p1, p2), g in d.groupby(["model", "phase1_data", "phase2_data"], sort=False):
        mean = g.groupby(["checkpoint"])[["answer_match", "exact_match", "in_language"]].mean()
        a1, a2 = mean.loc["P1", "answer_match"], mean.loc["P2", "answer_match"]
        e1, e2 = mean.loc["P1", "exact_match"], mean.loc["P2", "exact_match"]
        l2 = mean.loc["P2", "in_language"]
        n_seeds = g["seed"].nunique() if "seed" in g.columns else 1
        lines.append(f"{m} {p1} -> {p2} ({kind.get((p1, p2), 'similarity not measured')}): task skill "
                     f"{a1:.2f} -> {a2:.2f} ({a2 - a1:+.2f}); strict English exact match {e1:.2f} -> {e2:.2f}; "
                     f"{l2:.0%} of Phase 2 answers in {language_name(language)} (mean over {n_seeds} seed(s)).")
    lines.append("These are probe numbers on a few held-out items, without intervals; the claims table "
                 "(notebooks 03-04, results/<profile>/claims.csv) decides whether the paper's direction holds.")
    return "\n".join(lines)


def plot_probe(probe, stem=None, language: str = "en", metric: str = "exact_match"):
    """Bars of P1 vs P2 ``metric`` per family, one panel per (Phase 1 data -> Phase 2 data) cell."""
    import matplotlib.pyplot as plt

    d = probe[probe.language == language]
    cells = list(dict.fromkeys(zip(d.model, d.phase1_data, d.phase2_data, strict=True)))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.2), sharey=True, squeeze=False)
    for ax, (m, p1, p2) in zip(axes[0], cells, strict=True):
        sub = d[(d.model == m) & (d.phase1_data == p1) & (d.phase2_data == p2)]
        fams = sorted(sub.family.unique())
        for k, ck in enumerate(("P1", "P2")):
            vals = [sub[(sub.family == f) & (sub.checkpoint == ck)][metric].mean() for f in fams]
            ax.bar([i + 0.4 * k for i in range(len(fams))], vals, width=0.4, label=ck)
        ax.set_xticks([i + 0.2 for i in range(len(fams))], [f"family {f}" for f in fams])
        ax.set_title(f"{p1} → {p2}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} ({language_name(language)} test items)")
    axes[0][0].legend()
    fig.tight_layout()
    if stem is not None:
        save_figure(fig, stem)
    return fig
