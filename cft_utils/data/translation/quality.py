"""The quality report of a translation build: records kept and rejected, protected-span survival, length ratios
and language identification (langdetect) per language.
"""

from __future__ import annotations

import csv
import io
import os
import random
import statistics
from pathlib import Path
from typing import Any

from ...io import read_json, read_jsonl, write_json, write_text
from .layout import shard_paths
from .spans import LETTER, PLACEHOLDER_STYLES, protect

_LANGDETECT_ALIASES = {"zh": ("zh-cn", "zh-tw")}
MIN_LETTERS_FOR_LANGID = 20


def langdetect_languages() -> set[str]:
    """Language codes langdetect can recognise (``zh`` stands for zh-cn/zh-tw)."""
    from langdetect.detector_factory import PROFILES_DIRECTORY

    return set(os.listdir(PROFILES_DIRECTORY)) | {"zh"}


def detect_language(text: str) -> str | None:
    """langdetect's guess for ``text`` with protected spans removed (seeded); None if it cannot tell."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    masked, _ = protect(text)
    prose = PLACEHOLDER_STYLES["bracket"].exact.sub(" ", masked)
    if len(LETTER.findall(prose)) < MIN_LETTERS_FOR_LANGID:
        return None
    try:
        return detect(prose)
    except LangDetectException:
        return None


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def write_quality_report(
    out_dir: str | os.PathLike, langid: bool = True, max_per_language: int | None = 2000, seed: int = 0
) -> dict:
    """Per-language quality numbers of a build, written as ``quality_report.json`` and ``.csv`` in ``out_dir``.

    Columns: records in/kept/rejected, protected-span survival, output/input character ratios, and
    language identification (langdetect, on at most ``max_per_language`` kept records; ``langid=False``
    skips it; a language langdetect does not know, such as a sandbox language, is reported as missing).
    """
    out_dir = Path(out_dir)
    manifest = read_json(out_dir / "manifest.json")
    n_shards = manifest["n_shards_per_language"]
    supported = langdetect_languages() if langid else set()
    rows, details = [], {}
    for lang in manifest["languages"]:
        recs, kept = [], []
        for k in range(n_shards):
            data, meta = shard_paths(out_dir, lang, k)
            if not meta.exists():
                continue
            recs += read_json(meta)["records"]
            kept += read_jsonl(data)
        n_spans = sum(r["n_spans"] for r in recs)
        ratios = [r["chars_out"] / r["chars_in"] for r in recs if r["ok"] and r["chars_in"]]
        row: dict[str, Any] = {
            "language": lang, "n_input": len(recs), "n_kept": len(kept), "n_rejected": len(recs) - len(kept),
            "rejected_rate": (len(recs) - len(kept)) / len(recs) if recs else None,
            "spans_total": n_spans, "spans_survived": sum(r["n_spans_ok"] for r in recs),
            "span_survival_rate": sum(r["n_spans_ok"] for r in recs) / n_spans if n_spans else None,
            "length_ratio_mean": statistics.fmean(ratios) if ratios else None,
            "length_ratio_median": statistics.median(ratios) if ratios else None,
            "length_ratio_p05": _quantile(ratios, 0.05) if ratios else None,
            "length_ratio_p95": _quantile(ratios, 0.95) if ratios else None,
        }
        flagged: list[dict] = []
        if not langid:
            status = "skipped"
        elif lang not in supported:
            status = "unsupported"
        else:
            status = "ok"
        row.update({"langid_status": status, "langid_checked": None, "langid_undetermined": None,
                    "langid_wrong": None, "langid_wrong_rate": None})
        if status == "ok" and kept:
            sample = kept
            if max_per_language is not None and len(kept) > max_per_language:
                sample = random.Random(seed).sample(kept, max_per_language)
            accept = set(_LANGDETECT_ALIASES.get(lang, (lang,)))
            checked = undetermined = 0
            for rec in sample:
                text = "\n".join(m["content"] for m in rec["prompt"] + rec["completion"])
                guess = detect_language(text)
                if guess is None:
                    undetermined += 1
                    continue
                checked += 1
                if guess not in accept:
                    flagged.append({"id": rec["id"], "detected": guess})
            row.update({"langid_checked": checked, "langid_undetermined": undetermined,
                        "langid_wrong": len(flagged),
                        "langid_wrong_rate": len(flagged) / checked if checked else None})
        rows.append(row)
        details[lang] = {"langid_flagged": flagged}
    report = {"out_dir": str(out_dir), "config": manifest["config"], "languages": rows, "details": details,
              "notes": "None means not computed (no data, langid skipped, or language unknown to langdetect)."}
    write_json(out_dir / "quality_report.json", report)
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
        write_text(out_dir / "quality_report.csv", buf.getvalue())
    return report
