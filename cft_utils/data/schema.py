"""The common record schema (one record = one dict; TRL's conversational prompt/completion format)::

    {"id": str, "dataset": str, "language": "en" | ..., "counterpart_id": str | None,
     "prompt": [{"role": "system" | "user", "content": str}, ...],
     "completion": [{"role": "assistant", "content": str}]}

``counterpart_id`` is the id of the record's English original where one is known (sandbox sets, mOpenOrca);
generative and English replay need it. Every loader and the mOpenOrca builder check records with the one
:func:`validate_record` here.
"""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """A data file or record is malformed; the message names the file and the record."""


SCHEMA_KEYS = ("id", "dataset", "language", "counterpart_id", "prompt", "completion")
PROMPT_ROLES = ("system", "user")


def validate_record(rec: Any, where: str) -> dict:
    """Check one record against the common schema; raise DataError naming ``where`` (file + record) and the id."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    if "id" in rec:
        where = f"{where} (id={rec['id']!r})"
    for k in ("id", "language", "prompt", "completion"):
        if k not in rec:
            raise DataError(f"{where}: missing key {k!r}")
    if not isinstance(rec["id"], str) or not rec["id"]:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(rec["language"], str) or not rec["language"]:
        raise DataError(f"{where}: 'language' must be a non-empty string")
    prompt, completion = rec["prompt"], rec["completion"]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of messages")
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in PROMPT_ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: prompt[{j}] must be {{'role': 'system'|'user', 'content': str}}")
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise DataError(f"{where}: the last prompt message must be a non-empty user message")
    if not isinstance(completion, list) or len(completion) != 1:
        raise DataError(f"{where}: 'completion' must be [{{'role': 'assistant', 'content': str}}]")
    m = completion[0]
    if not isinstance(m, dict) or m.get("role") != "assistant" or not isinstance(m.get("content"), str):
        raise DataError(f"{where}: completion[0] must be {{'role': 'assistant', 'content': str}}")
    if not m["content"].strip():
        raise DataError(f"{where}: empty assistant response")
    cid = rec.get("counterpart_id")
    if cid is not None and not isinstance(cid, str):
        raise DataError(f"{where}: 'counterpart_id' must be a string or null")
    return rec
