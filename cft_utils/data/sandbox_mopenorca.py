"""The sandbox's mOpenOrca, built the way the paper's is: selective translation of the English originals
(``mopenorca_en``) into every other language of the world, with the world's exact word-by-word translator.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ExperimentConfig
from ..paths import cft_home
from ..sandbox.build import world_dir
from ..sandbox.world import world_for
from .schema import SCHEMA_KEYS, validate_record
from .translation.build import build_translated_dataset, load_translated_dataset
from .translation.translators import SandboxTranslator


def build_sandbox_mopenorca(cfg: ExperimentConfig, progress: bool = False) -> Path:
    """Build (once) the sandbox mOpenOrca; return the builder's output folder.

    Its ``dataset/`` is a ``save_to_disk`` dataset in the common schema, with a quality report beside it.
    An interrupted build resumes.
    """
    world = world_for(cfg.sandbox.world_spec())
    out = world_dir(world.spec, cft_home()) / "mopenorca"
    if not (out / "dataset" / "dataset_info.json").exists() or not (out / "manifest.json").exists():
        build_translated_dataset(world.dataset("mopenorca_en"), world.other_languages,
                                 SandboxTranslator(world.lexicon), out, shard_size=500, dataset_name="mopenorca",
                                 progress=progress, langid=False)  # langdetect knows no constructed language
    return out


def sandbox_mopenorca_records(cfg: ExperimentConfig, dataset: str) -> list[dict]:
    """The sandbox mOpenOrca records (built on first use), each original kept in one language, named ``dataset``."""
    out = build_sandbox_mopenorca(cfg)
    world = world_for(cfg.sandbox.world_spec())
    # The builder translates every original into every language (as the paper's mOpenOrca does); the
    # sandbox keeps each original in one language, round robin, so that mOpenOrca has as many records
    # per language as MultiAlpaca and no parallel copies (which a tiny model memorises).
    langs = world.other_languages
    order = {r["id"]: k for k, r in enumerate(world.dataset("mopenorca_en"))}
    recs = []
    for i, r in enumerate(load_translated_dataset(out)):
        r = validate_record(dict(r), f"{out}: record {i}")
        if langs[order[r["counterpart_id"]] % len(langs)] == r["language"]:
            recs.append({k: r[k] for k in SCHEMA_KEYS if k in r} | {"dataset": dataset})
    return recs
