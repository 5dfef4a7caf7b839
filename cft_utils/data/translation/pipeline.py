"""Translating texts and records: protect, segment, translate (each distinct piece once), restore, and keep a
record only when every message came back with its protected spans intact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .segment import split_for_translation
from .spans import check_placeholders, get_style, protect, restore
from .translators import Translator


@dataclass
class TextOutcome:
    """The result for one text: the restored translation (None if rejected) and span bookkeeping."""

    text: str | None
    n_spans: int
    n_spans_ok: int
    error: dict | None = None


def translate_texts(
    texts: Sequence[str],
    translator: Translator,
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[TextOutcome]:
    """Protect, segment, translate (``batch_size`` pieces per call, identical pieces once) and restore texts."""
    style = get_style(translator.placeholder_style)
    plans, all_spans = [], []
    unique: dict[str, int] = {}
    for t in texts:
        masked, spans = protect(t, style)
        plan = []
        for translate, piece in split_for_translation(
            masked, translator.max_input_tokens, translator.count_tokens, translator.split_lines, style
        ):
            if translate:
                plan.append((True, unique.setdefault(piece, len(unique))))
            else:
                plan.append((False, piece))
        plans.append(plan)
        all_spans.append(spans)
    pieces = list(unique)
    outputs: list[str] = []
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b: b + batch_size]
        out = translator.translate_batch(batch, src_lang, tgt_lang)
        if len(out) != len(batch):
            raise RuntimeError(f"{translator.name} returned {len(out)} translations for {len(batch)} inputs")
        outputs.extend("" if o is None else str(o).strip() for o in out)
        if on_batch:
            on_batch(len(batch))
    results = []
    for text, plan, spans in zip(texts, plans, all_spans, strict=True):
        masked_out = "".join(outputs[x] if tr else x for tr, x in plan)
        err = check_placeholders(masked_out, spans, style)
        if err is None:
            restored = restore(masked_out, spans, style)
            if restored.strip() or not text.strip():
                results.append(TextOutcome(restored, len(spans), len(spans)))
            else:  # the translator returned nothing for a non-empty text
                results.append(TextOutcome(None, len(spans), len(spans), {"empty_output": True}))
        else:
            bad = set(err.missing) | set(err.duplicated)
            results.append(TextOutcome(None, len(spans), len(spans) - len(bad), err.as_dict()))
    return results


def translate_records(records: Sequence[dict], lang: str, translator: Translator, src_lang: str = "en",
                      batch_size: int = 64, dataset_name: str | None = None,
                      on_batch: Callable[[int], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Translate every message of ``records`` into ``lang``; return ``(kept, per_record_stats)``.

    A record is kept only when all its messages came back with their placeholders intact; a kept record is
    in the common schema, with id ``<id>-<lang>``, ``counterpart_id`` the original's id, and the translator's
    name and version.
    """
    texts, where = [], []
    for r_i, rec in enumerate(records):
        for key in ("prompt", "completion"):
            for m_i, msg in enumerate(rec[key]):
                texts.append(msg["content"])
                where.append((r_i, key, m_i))
    outcomes = translate_texts(texts, translator, src_lang, lang, batch_size, on_batch)
    per_rec: list[dict] = [
        {"id": r["id"], "ok": True, "n_spans": 0, "n_spans_ok": 0, "chars_in": 0, "chars_out": 0, "errors": []}
        for r in records
    ]
    translated = [{"prompt": [dict(m) for m in r["prompt"]], "completion": [dict(m) for m in r["completion"]]}
                  for r in records]
    for (r_i, key, m_i), text, oc in zip(where, texts, outcomes, strict=True):
        st = per_rec[r_i]
        st["n_spans"] += oc.n_spans
        st["n_spans_ok"] += oc.n_spans_ok
        st["chars_in"] += len(text)
        if oc.text is None:
            st["ok"] = False
            st["errors"].append({"field": f"{key}[{m_i}]", **oc.error})
        else:
            st["chars_out"] += len(oc.text)
            translated[r_i][key][m_i] = {"role": records[r_i][key][m_i]["role"], "content": oc.text}
    kept = []
    for rec, tr, st in zip(records, translated, per_rec, strict=True):
        if not st["ok"]:
            st["chars_out"] = None
            continue
        kept.append({
            "id": f"{rec['id']}-{lang}",
            "dataset": dataset_name or f"m{rec.get('dataset') or 'dataset'}",
            "language": lang,
            "counterpart_id": rec["id"],
            "prompt": [{"role": m["role"], "content": m["content"]} for m in tr["prompt"]],
            "completion": [{"role": m["role"], "content": m["content"]} for m in tr["completion"]],
            "translator": translator.name,
            "translator_version": translator.version,
        })
    return kept, per_rec
