"""Rows of a local data file (JSON array, JSONL, CSV/TSV, parquet) or of a hub dataset, as ``(index, dict)`` pairs.

The format is chosen by content first (parquet's ``PAR1`` magic; a ``.json`` file that holds one object per line
is JSONL), then by suffix, then by the first character (``[`` JSON array, ``{`` JSONL). Every error is a
:class:`~cft_utils.data.schema.DataError` naming the file and, where there is one, the record and line.

Parquet and CSV go through ``datasets.load_dataset`` with ``data_files`` (memory-mapped Arrow; the real OpenOrca
files are parquet). JSON and JSONL are read here on purpose: an error must name the exact record and line, and
instruction files have heterogeneous rows (``input`` null in one row and a string in the next, a stray string or
list row) that Arrow's JSON reader rejects with a schema message naming neither.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .schema import DataError

SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
                  ".parquet": "parquet"}
JSON_TYPE_NAMES = {str: "string", list: "array", int: "number", float: "number", bool: "boolean",
                   type(None): "null"}


def local_path(path: str, base: Path, dataset: str) -> Path | None:
    """The local file or folder ``path`` names (a relative path is taken from ``base``), or None for a hub id.

    A path that exists is read locally whatever it looks like (``data/x.jsonl`` too); one that does not exist
    but looks like a path (starts with ``/``, ``.`` or ``~``, or ends in a data suffix) raises DataError naming
    the resolved path instead of becoming a hub lookup.
    """
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base / p
    if p.exists():
        return p
    if path.startswith(("/", ".", "~")) or Path(path).suffix.lower() in SUFFIX_FORMATS:
        raise DataError(f"{p}: no such file or folder for dataset {dataset!r}")
    return None


def file_format(path: Path) -> str:
    """``json``, ``jsonl``, ``csv``, ``tsv`` or ``parquet``, by content and suffix; DataError if none fits."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"
    raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r} "
                    f"(use .json, .jsonl, .csv, .tsv or .parquet)")


def decode_utf8(path: Path, data: bytes) -> str:
    """``data`` as text; DataError naming the file, line and byte when it is not UTF-8 (a BOM is allowed)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}); "
                        f"save the file as UTF-8") from None


def _object(path: Path, i: int, row, where: str) -> dict:
    if not isinstance(row, dict):
        kind = JSON_TYPE_NAMES.get(type(row), type(row).__name__)
        raise DataError(f"{path}: record {i}{where} is a JSON {kind}, expected an object")
    return row


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: record {i} (line {i + 1}) is not valid JSON: {e.msg}") from e
        yield i, _object(path, i, row, f" (line {i + 1})")


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):  # one object per line in a .json file
            yield from _jsonl_rows(path, text)
            return
        raise DataError(f"{path}: not valid JSON: {e.msg} (line {e.lineno})") from e
    if not isinstance(data, list):
        kind = JSON_TYPE_NAMES.get(type(data), "object")
        raise DataError(f"{path}: expected a JSON array of records, got a JSON {kind}")
    for i, row in enumerate(data):
        yield i, _object(path, i, row, "")


@contextmanager
def quiet_datasets():
    """Hide ``datasets``' progress bars for the duration (restored afterwards)."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    if was_on:
        ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()


def _arrow_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """Parquet or CSV through ``datasets.load_dataset``; CSV cells are read as text, empty cells as ''."""
    from datasets import Features, Value, load_dataset

    kwargs: dict = {}
    if fmt in ("csv", "tsv"):
        text = decode_utf8(path, path.read_bytes())
        sep = "\t" if fmt == "tsv" else ","
        header = next(csv.reader(io.StringIO(text), delimiter=sep), None)
        if not header:
            raise DataError(f"{path}: empty {fmt.upper()} file (expected a header row)")
        if len(set(header)) != len(header) or not all(h.strip() for h in header):
            raise DataError(f"{path}: the header row needs distinct, non-empty column names, got {header}")
        # Every column as text: "007" stays "007" and an empty cell is "" (not NaN).
        kwargs = {"features": Features({h: Value("string") for h in header}), "sep": sep,
                  "keep_default_na": False, "na_filter": False}
    try:
        with quiet_datasets():
            ds = load_dataset("csv" if fmt == "tsv" else fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # pyarrow / pandas / datasets each raise their own types; name the file
        raise DataError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from e
    yield from enumerate(ds)


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a local JSON array, JSONL, CSV/TSV or parquet file with their index; each row is an object."""
    fmt = file_format(path)
    if fmt in ("parquet", "csv", "tsv"):
        yield from _arrow_rows(path, fmt)
        return
    text = decode_utf8(path, path.read_bytes())
    yield from (_json_rows if fmt == "json" else _jsonl_rows)(path, text)


def hub_rows(path: str, revision: str | None, data_files=None) -> Iterator[tuple[int, dict]]:
    """Rows of the ``train`` split of hub dataset ``path`` (optionally only ``data_files`` of it)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(path, split="train", revision=revision, data_files=data_files)
    except (ConnectionError, OSError) as e:  # offline, unknown or gated: say which id, and what to do
        raise DataError(f"{path!r}: not a local file or folder, and not available from the hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); offline, download it first or point the "
                        f"dataset's path at a local copy") from None
    yield from enumerate(ds)
