"""Post-hoc forgetting mitigations on finished checkpoints: interpolation and reversion (no extra training).

* **Interpolation** (weight averaging of the Phase 1 and Phase 2 models): θ = (1 − α)·θ_P1 + α·θ_P2 for each α
  of a small grid; α = 0 is the Phase 1 model, α = 1 the Phase 2 model.
* **Reversion**: the Phase 2 update of the units that moved most is undone (reset to the Phase 1 values). A unit
  is one projection matrix of one decoder layer (``granularity="module"``: q, k, v, o, gate, up, down) or a whole
  decoder layer (``"layer"``). The criterion (documented choice): the *relative update*
  ||θ_P2 − θ_P1|| / ||θ_P1|| (``"relative_update"``, default; compares units of different sizes fairly) or the
  absolute update norm (``"absolute_update"``). ``amount`` is the share of units reset, most-moved first
  (rounded half up, at least one). Embeddings, the LM head and norms are never reset: the embeddings of a new
  script's tokens are most of what Phase 2 adds for language ability.

Both stream: the output safetensors file is written with its header first (shapes and dtypes are known from the
inputs) and then tensor by tensor, row-chunk by row-chunk, so neither model is ever loaded whole; the memory
needed is a few chunks (``chunk_elems`` elements). Values are computed in float64 and cast to the stored dtype;
α = 0 and α = 1 copy the bytes (bit-identical to P1 / P2). Sharded checkpoints keep their shard layout and index.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..checkpoints import (
    DEFAULT_CHUNK_ELEMS,
    SAFE_INDEX,
    Checkpoint,
    open_checkpoint,
    parameter_difference,
    parse_param_name,
    write_streamed,
)

_COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")
REVERSIBLE_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def _check_compatible(a: Checkpoint, b: Checkpoint) -> None:
    if set(a.tensors) != set(b.tensors):
        only = sorted(set(a.tensors) ^ set(b.tensors))[:3]
        raise ValueError(f"{a.path} and {b.path} hold different tensors (e.g. {only})")
    for n, ia in a.tensors.items():
        ib = b.tensors[n]
        if ia.shape != ib.shape or ia.dtype != ib.dtype:
            raise ValueError(f"tensor {n!r}: {ia.dtype}{list(ia.shape)} in {a.path} but "
                             f"{ib.dtype}{list(ib.shape)} in {b.path}")


def _merge_checkpoints(p1_dir, p2_dir, out_dir, combine: Callable[[str, object, object], object],
                       metadata: dict, chunk_elems: int) -> Path:
    """Stream P1 and P2 into ``out_dir``: each tensor chunk is ``combine(name, chunk_p1, chunk_p2)``."""
    a, b = open_checkpoint(p1_dir), open_checkpoint(p2_dir)
    _check_compatible(a, b)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[Path, list[str]] = {}
    for n in b.names():  # keep P2's shard layout
        files.setdefault(b.tensors[n].file, []).append(n)
    for file, names in files.items():
        specs = [(n, b.tensors[n].dtype, b.tensors[n].shape) for n in names]

        def chunks(name):
            for ca, cb in zip(a.iter_chunks(name, chunk_elems), b.iter_chunks(name, chunk_elems), strict=True):
                yield combine(name, ca, cb)

        write_streamed(out_dir / file.name, specs, chunks, {"format": "pt", **metadata})
    for extra in (SAFE_INDEX, *_COPY_FILES):
        if (Path(p2_dir) / extra).exists():
            shutil.copy2(Path(p2_dir) / extra, out_dir / extra)
    return out_dir


def interpolate_checkpoints(p1_dir: str | Path, p2_dir: str | Path, alpha: float, out_dir: str | Path,
                            chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Path:
    """Write θ = (1 − α)·θ_P1 + α·θ_P2 to ``out_dir`` (streamed; config and tokenizer copied from P2)."""
    import torch

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    def combine(name, ca, cb):
        if alpha == 0:
            return ca
        if alpha == 1:
            return cb
        if not ca.is_floating_point():
            raise ValueError(f"tensor {name!r} is not floating point ({ca.dtype}); cannot interpolate")
        mixed = ca.to(torch.float64) * (1 - alpha) + cb.to(torch.float64) * alpha
        return mixed.to(ca.dtype)

    return _merge_checkpoints(p1_dir, p2_dir, out_dir, combine, {"posthoc": "interpolation", "alpha": alpha},
                              chunk_elems)


def reversion_units(p1_dir: str | Path, p2_dir: str | Path, criterion: str = "relative_update",
                    granularity: str = "module", kinds=REVERSIBLE_KINDS):
    """Rank the units of the Phase 2 update (streamed): a DataFrame with unit, layer, module, update (l2),
    p1_norm, relative, score, rank, and the tensors each unit covers; most-moved first."""
    if criterion not in ("relative_update", "absolute_update"):
        raise ValueError(f"criterion must be relative_update or absolute_update, got {criterion!r}")
    if granularity not in ("module", "layer"):
        raise ValueError(f"granularity must be module or layer, got {granularity!r}")
    diff = parameter_difference(p1_dir, p2_dir, row_modules=())
    t = diff.tensors[diff.tensors["kind"].isin(list(kinds)) & diff.tensors["layer"].notna()].copy()
    if t.empty:
        raise ValueError(f"no decoder-layer tensors of kinds {list(kinds)} in {p1_dir}")
    t["layer"] = t["layer"].astype(int)
    keys = ["layer", "module"] if granularity == "module" else ["layer"]
    g = t.groupby(keys).agg(sq_diff=("sq_diff", "sum"), sq_a=("sq_a", "sum"),
                            tensors=("tensor", lambda s: sorted(s))).reset_index()
    g["update"] = g["sq_diff"] ** 0.5
    g["p1_norm"] = g["sq_a"] ** 0.5
    g["relative"] = g["update"] / g["p1_norm"].where(g["p1_norm"] > 0)
    g["score"] = g["relative"] if criterion == "relative_update" else g["update"]
    g["unit"] = g.apply(lambda r: f"layers.{r.layer}.{r.module}" if granularity == "module"
                        else f"layers.{r.layer}", axis=1)
    g = g.sort_values(["score"] + keys, ascending=[False] + [True] * len(keys), kind="mergesort")
    g["rank"] = range(1, len(g) + 1)
    cols = ["unit", "layer"] + (["module"] if granularity == "module" else []) + [
        "update", "p1_norm", "relative", "score", "rank", "tensors"]
    return g[cols].reset_index(drop=True)


def n_reverted(n_units: int, amount: float) -> int:
    """How many units ``amount`` (a share in (0, 1]) resets: rounded half up, at least one."""
    if not 0 < amount <= 1:
        raise ValueError(f"amount must be in (0, 1], got {amount}")
    return max(1, min(n_units, int(n_units * amount + 0.5)))


def revert_checkpoint(p1_dir: str | Path, p2_dir: str | Path, out_dir: str | Path, amount: float,
                      criterion: str = "relative_update", granularity: str = "module",
                      tensors: Iterable[str] | None = None, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> dict:
    """Write P2 with the most-moved units reset to P1 (or exactly ``tensors`` when given); return what was reset.

    Returns {"reverted_units": [...], "reverted_tensors": [...], "ranking": DataFrame}.
    """
    ranking = None
    if tensors is None:
        ranking = reversion_units(p1_dir, p2_dir, criterion, granularity)
        k = n_reverted(len(ranking), amount)
        chosen = ranking.head(k)
        units = chosen["unit"].tolist()
        reset = sorted({t for ts in chosen["tensors"] for t in ts})
    else:
        reset, units = sorted(tensors), sorted(tensors)
    known = set(open_checkpoint(p2_dir).tensors)
    unknown = [t for t in reset if t not in known]
    if unknown:
        raise ValueError(f"cannot revert unknown tensor(s) {unknown[:3]} of {p2_dir}")
    reset_set = set(reset)
    _merge_checkpoints(p1_dir, p2_dir, out_dir, lambda name, ca, cb: ca if name in reset_set else cb,
                       {"posthoc": "reversion", "amount": amount, "criterion": criterion,
                        "granularity": granularity}, chunk_elems)
    return {"reverted_units": units, "reverted_tensors": reset, "ranking": ranking}


def layer_of(name: str) -> int | None:
    """The decoder layer index in a tensor name (None for embeddings, the head, the final norm)."""
    return parse_param_name(name)[0]
