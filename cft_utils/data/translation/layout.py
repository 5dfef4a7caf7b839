"""Where a translation build keeps its files, under its ``out_dir``::

    manifest.json                      the build's configuration, languages and progress
    shards/<lang>/<k>.jsonl            kept records of slice k, translated into <lang>
    shards/<lang>/<k>.meta.json        written after the data: the shard's commit marker and per-record stats
    dataset/                           all kept records (``datasets.save_to_disk``)
    rejected.jsonl, quality_report.{json,csv}
"""

from __future__ import annotations

from pathlib import Path

FORMAT_VERSION = 1


def shard_paths(out_dir: Path, lang: str, k: int) -> tuple[Path, Path]:
    """The data file and metadata file (commit marker) of shard ``k`` of language ``lang``."""
    d = Path(out_dir) / "shards" / lang
    return d / f"{k:05d}.jsonl", d / f"{k:05d}.meta.json"
