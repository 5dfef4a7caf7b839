"""A quick forgetting probe on the sandbox world's held-out test items (notebook 02): greedy answers of a checkpoint,
scored by exact match in the prompt's language, by answer match in any language (the task skill) and by the answer's
language (language confusion). The benchmarks proper are in cft_utils.evaluation.

And a reading probe (notebook 04): does a model answer a question about a passage by reading the passage or by
recalling what it knows? The passages state values that contradict the world's facts, so the two answers differ.
"""

from __future__ import annotations

import random

from ..io import read_json, write_json
from ..languages import language_name
from ..models import generate, generate_texts, load_model, load_tokenizer
from ..outputs import save_figure
from .world import ANSWER_MARK, COLOURS, PLACES, World, final_answer, world_for


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


PROBE_VERSION = 3


def probe_runs(plan, world: World, families=("A", "B", "C"), languages: tuple[str, ...] | None = None, cfg=None,
               workers: int | None = None):
    """Exact-match probe of every Phase 2 run and its Phase 1 parent (P1 vs P2), as a tidy DataFrame.

    Probes are cached in each run's folder (``probe.json``), so a rerun costs nothing. Given the profile's ``cfg``,
    checkpoints not probed yet are spread over the executor's worker processes (``workers``, default: one per
    core); the rows do not depend on where they were computed (greedy decoding, one checkpoint per process).
    """
    import pandas as pd

    languages = tuple(languages or ("en", world.other_languages[0]))
    want = {"families": list(families), "languages": list(languages), "version": PROBE_VERSION}
    cache: dict[str, list[dict]] = {}

    def cached(run) -> list[dict] | None:
        f = run.dir / "probe.json"
        if f.exists() and read_json(f)["config"] == want:
            return read_json(f)["rows"]
        return None

    def store(run, rows: list[dict]) -> None:
        cache[str(run.model_dir)] = rows
        if run.data_key is not None:
            write_json(run.dir / "probe.json", {"config": want, "rows": rows})

    checkpoints = list({str(r.model_dir): r for p2 in plan.phase2 for r in (p2.parent, p2)}.values())
    todo = []
    for run in checkpoints:
        rows = cached(run)
        if rows is None:
            todo.append(run)
        else:
            cache[str(run.model_dir)] = rows
    if cfg is not None and len(todo) > 1:
        from ..executor import default_workers, parallel_map

        n = workers or default_workers(cfg)
        if n > 1:
            calls = [(cfg.source_file, dict(cfg.overrides), r.name, tuple(families), languages) for r in todo]
            for run, rows in zip(todo, parallel_map(probe_named_run, calls, n), strict=True):
                store(run, rows)
            todo = []
    for run in todo:
        store(run, exact_match_probe(run.model_dir, world, families, languages))

    rows = []
    for r in plan.phase2:
        for ckpt, run in (("P1", r.parent), ("P2", r)):
            for row in cache[str(run.model_dir)]:
                rows.append({"model": r.model, "phase1_data": r.phase1_data, "phase2_data": r.phase2_data,
                             "strategy": r.strategy, "checkpoint": ckpt, "seed": r.seed, **row})
    return pd.DataFrame(rows)


def probe_named_run(params_file: str, overrides: dict, name: str, families: tuple, languages: tuple) -> list[dict]:
    """In a worker process: :func:`exact_match_probe` of the run called ``name`` of the profile."""
    from ..executor import worker_context

    cfg, runs = worker_context(params_file, overrides)
    return exact_match_probe(runs[name].model_dir, world_for(cfg.sandbox.world_spec()), families, languages)


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


# ------------------------------------------------------------------------------------------ reading

_READ_INTRO = "read the text and answer ."


def reading_items(world: World, n: int = 40, seed: int = 0) -> list[dict]:
    """``n`` counterfactual reading items in world English: a passage that gives two or three things a place (or a
    colour) other than the world's fact, and a question about one of them. ``passage`` is the answer a reader gives,
    ``fact`` the one memory gives (they always differ). Half place questions (the MLQA-like form), half colour
    questions (the XQuAD-like form); the same items serve every language (translate them)."""
    rng = random.Random(f"{world.spec.seed}-reading-probe-{seed}")
    names = sorted(world.facts)
    items = []
    for i in range(n):
        ns = rng.sample(names, rng.randint(2, 3))
        k = rng.randrange(len(ns))
        if i % 2 == 0:
            val = {a: rng.choice([p for p in PLACES[world.facts[a].category] if p != world.facts[a].place]) for a in ns}
            sents = [f"the {a} is found in the {val[a]} ." for a in ns]
            question, fact = f"where is the {ns[k]} found ?", world.facts[ns[k]].place
        else:
            val = {a: rng.choice([c for c in COLOURS if c != world.facts[a].colour]) for a in ns}
            sents = [f"the {a} is {val[a]} ." for a in ns]
            question, fact = f"what colour is the {ns[k]} ?", world.facts[ns[k]].colour
        items.append({"text": f"{_READ_INTRO} text : {' '.join(sents)} question : {question}",
                      "passage": val[ns[k]], "fact": fact})
    return items


def copy_items(world: World, n: int = 40, seed: int = 0) -> list[dict]:
    """``n`` list-repetition prompts in the pre-training corpus's own form ("the list is : a , b , c . again :"):
    the simplest in-context copy. ``passage`` is the list to repeat."""
    rng = random.Random(f"{world.spec.seed}-copy-probe-{seed}")
    names = sorted(world.facts)
    out = []
    for _ in range(n):
        items = " , ".join(rng.sample(names, rng.randint(3, 5)))
        out.append({"text": f"the list is : {items} . again :", "passage": items, "fact": None})
    return out


def _first_word(text: str) -> str:
    words = text.replace('"', " ").split()
    return words[0] if words else ""


def plain_continuations(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy continuations of raw text (no chat template: the pre-training format)."""
    return [g.text for g in generate_texts(model, tokenizer, texts, max_new_tokens, batch_size)]


def reading_probe(model_dir, world: World, languages=("en",), n: int = 40) -> list[dict]:
    """How a model answers questions about a passage that contradicts what it knows, per language and format.

    * ``chat``: the question as a user turn, as the language-ability benchmarks ask it (after instruction tuning);
    * ``plain``: the passage, the question and the pre-training corpus's "answer :" cue, no template (what a base
      model saw);
    * ``copy``: repeating a list just read, the simplest in-context copy (plain format).

    Per row: ``read`` (the share of answers that give the passage's value, or repeat the list), ``recalled`` (the
    share that give the world's fact instead: memory, not reading), ``english`` (the share of answers written in
    English, :func:`response_language`) and ``n``. A model that recalls cannot answer
    in another language by copying the passage's words; it answers with the words it learnt the fact in.
    """
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, device="auto")
    items, copies = reading_items(world, n), copy_items(world, n)
    rows = []
    for lang in languages:
        tr = lambda s, lang=lang: world.translate(s, lang)  # noqa: E731
        chat = generate_answers(model, tok, [{"prompt": [{"role": "user", "content": tr(it["text"])}]} for it in items],
                                max_new_tokens=6)
        plain = plain_continuations(model, tok, [f"{tr(it['text'])} {tr('answer :')}" for it in items], 4)
        for fmt, answers in (("chat", chat), ("plain", plain)):
            rows.append({"probe": "reading", "format": fmt, "language": lang,
                         **score_reading(world, lang, items, answers)})
        cont = plain_continuations(model, tok, [tr(c["text"]) for c in copies], 16)
        rows.append({"probe": "copy", "format": "plain", "language": lang, **score_copy(world, lang, copies, cont)})
    return rows


def score_reading(world: World, lang: str, items: list[dict], answers: list[str]) -> dict:
    """``read``, ``recalled``, ``english`` and ``n`` of ``answers`` to :func:`reading_items` asked in ``lang``:
    an answer's first word (quotes removed) is compared with the passage's value and with the world's fact, both
    in ``lang``."""
    n = len(items)
    first = [_first_word(a) for a in answers]
    return {"read": sum(f == world.translate(it["passage"], lang) for f, it in zip(first, items, strict=True)) / n,
            "recalled": sum(f == world.translate(it["fact"], lang) for f, it in zip(first, items, strict=True)) / n,
            "english": sum(response_language(world, a) == "en" for a in answers) / n, "n": n}


def score_copy(world: World, lang: str, items: list[dict], continuations: list[str]) -> dict:
    """``read`` (the share of continuations that repeat the list in ``lang``) and ``n`` for :func:`copy_items`."""
    n = len(items)
    ok = sum(c.startswith(world.translate(it["passage"], lang)) for c, it in zip(continuations, items, strict=True))
    return {"read": ok / n, "recalled": None, "english": None, "n": n}


READING_PROBE_VERSION = 3  # 3: plain continuations stop at a stop token


def reading_probe_runs(cfg, plan, n: int = 40, languages: tuple[str, ...] | None = None):
    """:func:`reading_probe` of the base model and every Phase 1 model of ``plan`` (English and the world's first
    other language by default), as a tidy DataFrame with ``model_kind`` (``base`` or the Phase 1 data) and ``seed``.
    Cached per run (``reading_probe.json``); the base model is probed on every call (one model, seconds)."""
    import pandas as pd

    from .build import sandbox_paths

    world = world_for(cfg.sandbox.world_spec())
    languages = tuple(languages or ("en", world.other_languages[0]))
    want = {"languages": list(languages), "n": n, "version": READING_PROBE_VERSION}
    rows = [{"model_kind": "base", "seed": None, **r}
            for r in reading_probe(sandbox_paths(cfg)["base"], world, languages, n)]
    seen = set()
    for r in [p.parent for p in plan.phase2] + list(plan.phase1):
        if r is None or r.run_id in seen or not r.done():
            continue
        seen.add(r.run_id)
        f = r.dir / "reading_probe.json"
        if f.exists() and read_json(f)["config"] == want:
            probe = read_json(f)["rows"]
        else:
            probe = reading_probe(r.model_dir, world, languages, n)
            if r.data_key is not None:  # an off-the-shelf model's folder is not ours to write in
                write_json(f, {"config": want, "rows": probe})
        rows += [{"model_kind": r.phase1_data, "seed": r.seed, **x} for x in probe]
    return pd.DataFrame(rows)


def reading_summary(table) -> str:
    """Sentences from :func:`reading_probe_runs`' numbers (means over seeds): how often each kind of model reads the
    passage, recalls the world's fact, and repeats a list it has just read; then what that means for the language
    benchmarks, decided by the numbers."""
    lines = []
    langs = list(dict.fromkeys(table.language))
    other = next((x for x in langs if x != "en"), None)

    def share(kind, probe, fmt, lang, col):
        d = table[(table.model_kind == kind) & (table.probe == probe) & (table.format == fmt) & (table.language == lang)]
        return float(d[col].mean()) if len(d) else float("nan")

    for kind in dict.fromkeys(table.model_kind):
        n_models = table[table.model_kind == kind].seed.nunique(dropna=False)
        parts = []
        for lang in langs:
            name = language_name(lang)
            parts.append(f"{name}: asked in the chat format it reads {share(kind, 'reading', 'chat', lang, 'read'):.0%} "
                         f"and recalls {share(kind, 'reading', 'chat', lang, 'recalled'):.0%}, in plain text reads "
                         f"{share(kind, 'reading', 'plain', lang, 'read'):.0%} and recalls "
                         f"{share(kind, 'reading', 'plain', lang, 'recalled'):.0%}, repeats a list "
                         f"{share(kind, 'copy', 'plain', lang, 'read'):.0%}")
        who = "the base model" if kind == "base" else f"Phase 1 on {kind} ({n_models} seed(s))"
        lines.append(f"{who}: " + "; ".join(parts) + ".")
    p1 = table[table.model_kind != "base"]
    if len(p1) and other is not None:
        read = p1[(p1.probe == "reading")].read.mean()
        recalled = p1[(p1.probe == "reading") & (p1.language == "en")].recalled.mean()
        chat_other = p1[(p1.probe == "reading") & (p1.format == "chat") & (p1.language == other)]
        if read < 0.1 and recalled > read:
            english = chat_other.english.mean()
            lines.append(
                f"The Phase 1 models answer questions about a passage from memory (English: {recalled:.0%} of answers "
                f"give the world's fact against the passage) and read it in {read:.0%} of all answers. The "
                f"language-ability benchmarks can be passed in {language_name(other)} by copying the passage's words "
                f"or by recalling the fact in that language; asked in the chat format in {language_name(other)}, they "
                f"read {chat_other.read.mean():.0%}, recall {chat_other.recalled.mean():.0%} and answer in English "
                f"{english:.0%} of the time"
                + (": what they know they answer in the language of their instruction tuning, so their "
                   "language-ability scores start near the floor." if english >= 0.5 else "."))
        else:
            lines.append(f"The Phase 1 models read the passage in {read:.0%} of answers (all formats and languages) "
                         f"and give the world's fact against it in {recalled:.0%} of English answers.")
    lines.append(f"Counterfactual passages, {int(table.n.max())} items per row, no interval: a diagnosis, not a claim.")
    return "\n".join(lines)
