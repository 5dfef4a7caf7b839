"""Safetensors checkpoints, streamed: read a tensor row-chunk by row-chunk, write one the same way, and measure
how two checkpoints differ, per tensor, per layer, per module and per attention head.

The bottom layer shared by MPD (:mod:`cft_utils.analysis.mpd`), layer freezing (LF_H2 ranks the layers that
changed most) and the post-hoc strategies (interpolation and reversion write merged checkpoints). It imports
nothing of the package, so every layer above may use it.

* **Reading.** :func:`open_checkpoint` indexes ``model.safetensors`` or a sharded ``model.safetensors.index.json``
  from the headers alone; :meth:`Checkpoint.iter_chunks` yields one row block of one tensor at a time
  (``safetensors.safe_open`` is opened and closed per chunk, so not even memory-mapped pages accumulate).
* **Writing.** :func:`write_streamed` writes the header first (shapes and dtypes are known up front) and then
  each tensor's chunks, so no model is ever held whole.
* **Differences.** :func:`parameter_difference` accumulates Σ(a-b)², Σa², Σb² in float64 per tensor (and per
  output row for q/k/v, for per-head rankings). Peak memory depends on ``chunk_elems``, not on the model's size
  (``bench/bench_mpd_memory.py`` measures it). :func:`rank_layers` / :func:`rank_heads` order the layers (heads)
  that changed most.
* **Tied embeddings.** A checkpoint saved with ``tie_word_embeddings`` stores no ``lm_head.weight``. When one
  checkpoint has an ``lm_head`` and the other does not (and its config does not say ``tie_word_embeddings:
  false``), the missing head is read from that checkpoint's input embedding, since that is the head the model
  uses. When neither stores one, the shared matrix is counted once (as the embedding).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
#: Elements per chunk read from a tensor; three float64 work buffers of this size (16 MiB each at the
#: default) bound the memory of :func:`parameter_difference`.
DEFAULT_CHUNK_ELEMS = 1 << 21

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_PARAM_LEAVES = {"weight", "bias"}
_KINDS = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "embed_tokens": "embed", "wte": "embed", "word_embeddings": "embed", "embed_in": "embed",
    "lm_head": "lm_head", "embed_out": "lm_head",
}
# Fused projections (Phi-3 style: one tensor whose output rows are the parts, concatenated in this order). They are
# measured, ranked and frozen as their parts: a q/k/v ranking or freeze means the same rows in a fused model.
FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
_LM_HEAD = "lm_head.weight"


def parse_param_name(name: str) -> tuple[int | None, str, str]:
    """(layer index or None, module leaf, kind) of a tensor name, for any architecture.

    ``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "q_proj", "q")``; the layer comes from a
    ``layers.<i>.`` (or ``h.<i>.``, ``blocks.<i>.``) segment, the module leaf is the part before
    ``weight``/``bias``, and the kind groups leaves (q, k, v, o, gate, up, down, embed, norm, lm_head;
    other leaves keep their own name).
    """
    m = _LAYER_RE.search(name)
    layer = int(m.group(1)) if m else None
    parts = name.split(".")
    leaf = parts[-2] if len(parts) > 1 and parts[-1] in _PARAM_LEAVES else parts[-1]
    if leaf in _KINDS:
        kind = _KINDS[leaf]
    elif "norm" in leaf or re.fullmatch(r"ln_?\w*", leaf):
        kind = "norm"
    else:
        kind = leaf
    return layer, leaf, kind


def fused_row_slices(leaf: str, config: dict) -> dict[str, slice]:
    """The output rows of each part of a fused projection (``qkv_proj``: q, k, v heads x head_dim from the
    config's ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``; ``gate_up_proj``: two halves of
    ``2 x intermediate_size``); empty for a leaf that is not fused."""
    if leaf not in FUSED_PROJECTIONS:
        return {}
    if leaf == "qkv_proj":
        n_heads = int(config["num_attention_heads"])
        n_kv = int(config.get("num_key_value_heads") or n_heads)
        head_dim = int(config.get("head_dim") or config["hidden_size"] // n_heads)
        sizes = (n_heads * head_dim, n_kv * head_dim, n_kv * head_dim)
    else:
        sizes = (int(config["intermediate_size"]),) * 2
    out, start = {}, 0
    for part, n in zip(FUSED_PROJECTIONS[leaf], sizes, strict=True):
        out[part] = slice(start, start + n)
        start += n
    return out


def fused_part_name(name: str, leaf: str, part: str) -> str:
    """``model.layers.0.self_attn.qkv_proj.weight`` -> ``model.layers.0.self_attn.q_proj.weight``."""
    head, _, tail = name.rpartition(f"{leaf}.")
    return f"{head}{part}.{tail}"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is (read from the safetensors header, no data loaded)."""

    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)


@dataclass
class Checkpoint:
    """An opened safetensors checkpoint: a map tensor name -> :class:`TensorInfo`, and its config."""

    path: Path
    tensors: dict[str, TensorInfo]
    config: dict = field(default_factory=dict)

    def names(self) -> list[str]:
        """Tensor names in a natural order (non-layer tensors first, then by layer, then by name)."""
        def key(n):
            layer = parse_param_name(n)[0]
            return (-1 if layer is None else layer, n)

        return sorted(self.tensors, key=key)

    def iter_chunks(self, name: str, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Iterator[Any]:
        """Yield the tensor ``name`` as consecutive row blocks of about ``chunk_elems`` elements."""
        from safetensors import safe_open

        info = self.tensors[name]
        if len(info.shape) == 0:
            with safe_open(info.file, framework="pt") as f:
                yield f.get_tensor(name).reshape(1)
            return
        rows = info.shape[0]
        row_elems = max(1, math.prod(info.shape[1:]))
        step = max(1, chunk_elems // row_elems)
        for start in range(0, rows, step):
            # Open per chunk: closing unmaps the file, so resident pages never pile up.
            with safe_open(info.file, framework="pt") as f:
                yield f.get_slice(name)[start : start + step]


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a checkpoint directory (``model.safetensors`` or a sharded ``model.safetensors.index.json``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if (path / SAFE_WEIGHTS).exists():
        files = {path / SAFE_WEIGHTS: None}
    elif (path / SAFE_INDEX).exists():
        try:
            weight_map = json.loads((path / SAFE_INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path / SAFE_INDEX}: not a safetensors index with a 'weight_map'") from err
        files = {}
        for tensor, shard in weight_map.items():
            files.setdefault(path / shard, set()).add(tensor)
        for shard in files:
            if not shard.exists():
                raise FileNotFoundError(f"{path / SAFE_INDEX} names shard {shard.name}, which is missing")
    else:
        raise FileNotFoundError(f"{path} holds neither {SAFE_WEIGHTS} nor {SAFE_INDEX}")

    tensors: dict[str, TensorInfo] = {}
    for file, expected in files.items():
        with safe_open(file, framework="pt") as f:
            keys = set(f.keys())
            if expected is not None and not expected <= keys:
                missing = sorted(expected - keys)[:3]
                raise ValueError(f"{file}: index lists tensor(s) {missing} that the shard lacks")
            for name in keys if expected is None else expected:
                if name in tensors:
                    raise ValueError(f"tensor {name!r} appears in two shards of {path}")
                sl = f.get_slice(name)
                tensors[name] = TensorInfo(file, sl.get_dtype(), tuple(sl.get_shape()))
    config = {}
    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
    return Checkpoint(path, tensors, config)


def embedding_name(ckpt: Checkpoint) -> str | None:
    """The name of the input-embedding tensor of ``ckpt`` (None when there is not exactly one)."""
    found = [n for n in ckpt.tensors if n.endswith(_EMBED_SUFFIXES)]
    return found[0] if len(found) == 1 else None


def aligned_names(a: Checkpoint, b: Checkpoint) -> list[tuple[str, str, str, str]]:
    """(name, name in a, name in b, note) for every parameter compared; raises on any mismatch."""
    names_a, names_b = set(a.tensors), set(b.tensors)
    subst = {}
    for missing_in, present_set, label in ((a, names_b, "a"), (b, names_a, "b")):
        heads = [n for n in present_set if n.endswith(_LM_HEAD) and n not in missing_in.tensors]
        for head in heads:
            embed = embedding_name(missing_in)
            if missing_in.config.get("tie_word_embeddings") is False or embed is None:
                continue  # reported below as a missing tensor
            subst[(label, head)] = embed
    rows = []
    for name in a.names() + [n for n in b.names() if n not in names_a]:
        in_a = name if name in names_a else subst.get(("a", name))
        in_b = name if name in names_b else subst.get(("b", name))
        if in_a is None or in_b is None:
            where, path = ("a", a.path) if in_a is None else ("b", b.path)
            raise ValueError(f"tensor {name!r} is missing from checkpoint {where} ({path})")
        note = ""
        if in_a != name:
            note = f"tied: read from {in_a} in checkpoint a"
        elif in_b != name:
            note = f"tied: read from {in_b} in checkpoint b"
        rows.append((name, in_a, in_b, note))
    return rows


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1}

def tensor_bytes(t) -> bytes:
    """The raw little-endian bytes of a CPU tensor as safetensors stores them (bfloat16 included)."""
    import torch

    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_streamed(out_file: Path, specs: list[tuple[str, str, tuple[int, ...]]],
                   chunks: Callable[[str], Iterable], metadata: dict | None = None) -> None:
    """Write a safetensors file whose tensors (name, dtype, shape) come as row chunks from ``chunks(name)``.

    The header (offsets from the shapes) goes first, then each tensor's bytes in order; the byte count of every
    tensor is checked. Written to a temporary name and renamed, so a crash leaves no half file.
    """
    header, offset = {}, 0
    for name, dtype, shape in specs:
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {dtype}")
        n = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = out_file.with_name(out_file.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape in specs:
            want, wrote = math.prod(shape) * DTYPE_BYTES[dtype], 0
            for c in chunks(name):
                b = tensor_bytes(c)
                f.write(b)
                wrote += len(b)
            if wrote != want:
                raise RuntimeError(f"tensor {name!r}: wrote {wrote} bytes, expected {want}")
    tmp.replace(out_file)


# --------------------------------------------------------------------------------------------------
# Differences and rankings
# --------------------------------------------------------------------------------------------------

@dataclass
class ParameterDifference:
    """Result of :func:`parameter_difference`: per-tensor squared sums and aggregations of ``a - b``.

    ``tensors`` has one row per parameter: tensor, layer (nullable), module (leaf), kind, numel, dtype,
    sq_diff = Σ(a-b)², sq_a = Σa², sq_b = Σb², note. ``rows`` maps each tensor of ``row_modules`` to the
    per-output-row (sq_diff, sq_a) arrays, which :meth:`by_head` groups by attention head.
    """

    dir_a: Path
    dir_b: Path
    tensors: pd.DataFrame
    rows: dict[str, tuple[np.ndarray, np.ndarray]]
    config_a: dict

    @property
    def total_sq(self) -> float:
        """Σ over all parameters of (a-b)²."""
        return float(self.tensors["sq_diff"].sum())

    @property
    def total_l2(self) -> float:
        """||a - b||₂ over all parameters."""
        return math.sqrt(self.total_sq)

    def _group(self, keys: list[str]) -> pd.DataFrame:
        g = self.tensors.groupby(keys, dropna=True)[["sq_diff", "sq_a", "sq_b", "numel"]].sum().reset_index()
        g["l2"] = np.sqrt(g["sq_diff"])
        g["norm_a"] = np.sqrt(g["sq_a"])
        g["relative"] = g["l2"] / g["norm_a"].where(g["norm_a"] > 0)  # NaN where the norm is 0
        total = self.total_sq
        g["share"] = g["sq_diff"] / total if total > 0 else np.nan
        return g

    def by_layer(self) -> pd.DataFrame:
        """One row per layer index: sq_diff, l2, norm_a, relative (l2 / norm_a), share of the total."""
        return self._group(["layer"])

    def by_kind(self) -> pd.DataFrame:
        """One row per module kind (q, k, v, o, gate, up, down, embed, norm, lm_head, ...)."""
        return self._group(["kind"])

    def by_layer_module(self) -> pd.DataFrame:
        """One row per (layer, module leaf), weights and biases together."""
        return self._group(["layer", "module"])

    def by_head(self, modules: Sequence[str] = ("q_proj", "k_proj", "v_proj")) -> pd.DataFrame:
        """Per attention head change of each module (rows of the projection grouped by head).

        Head counts come from ``config.json`` of checkpoint a: ``num_attention_heads`` for q,
        ``num_key_value_heads`` (default: the same) for k and v, ``head_dim`` (default
        hidden_size / num_attention_heads).
        """
        cfg = self.config_a
        if "num_attention_heads" not in cfg:
            raise ValueError(f"per-head grouping needs num_attention_heads in {self.dir_a}/config.json")
        n_heads = int(cfg["num_attention_heads"])
        n_kv = int(cfg.get("num_key_value_heads") or n_heads)
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads)
        out = []
        for name, (sq_diff, sq_a) in self.rows.items():
            layer, module, _ = parse_param_name(name)
            if module not in modules:
                continue
            heads = n_heads if module.startswith("q") else n_kv
            if len(sq_diff) != heads * head_dim:
                raise ValueError(
                    f"tensor {name!r} has {len(sq_diff)} output rows, not {heads} heads x {head_dim}"
                )
            for h, (d, a) in enumerate(zip(sq_diff.reshape(heads, head_dim).sum(1),
                                           sq_a.reshape(heads, head_dim).sum(1), strict=True)):
                out.append({"layer": layer, "module": module, "head": h, "tensor": name,
                            "sq_diff": d, "sq_a": a})
        if not out:
            raise ValueError(f"no tensors of modules {list(modules)} were recorded per row")
        df = pd.DataFrame(out).groupby(["layer", "module", "head"])[["sq_diff", "sq_a"]].sum().reset_index()
        df["l2"] = np.sqrt(df["sq_diff"])
        df["norm_a"] = np.sqrt(df["sq_a"])
        df["relative"] = df["l2"] / df["norm_a"].where(df["norm_a"] > 0)
        return df


def _row_squares(flat, rows: int) -> np.ndarray:
    """Σx² of each of ``rows`` equal rows of the flat buffer ``flat`` (a batched dot product)."""
    import torch

    m = flat.view(rows, -1)
    return torch.einsum("ij,ij->i", m, m).numpy()


def parameter_difference(
    dir_a: str | Path,
    dir_b: str | Path,
    *,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    row_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    allow_dtype_mismatch: bool = False,
) -> ParameterDifference:
    """Stream two checkpoints tensor by tensor and return Σ(a-b)² per tensor, per layer, per module.

    A fused projection (``qkv_proj``, ``gate_up_proj``: :data:`FUSED_PROJECTIONS`) is reported as its parts
    (``q_proj``, ``k_proj``, ``v_proj``; ``gate_proj``, ``up_proj``), each with the rows it owns, so rankings per
    q/k/v module and per head read a fused model like any other (``note`` names the fused tensor and the rows).

    Raises ``ValueError`` naming the tensor when the tensor sets, shapes or dtypes differ (dtype
    differences pass with ``allow_dtype_mismatch=True``: every value is compared in float64), and when
    the configs name different model types.
    """
    import torch

    a, b = open_checkpoint(dir_a), open_checkpoint(dir_b)
    ta, tb = a.config.get("model_type"), b.config.get("model_type")
    if ta and tb and ta != tb:
        raise ValueError(f"architecture mismatch: {a.path} is {ta!r}, {b.path} is {tb!r}")
    aligned = aligned_names(a, b)
    for name, in_a, in_b, _ in aligned:
        ia, ib = a.tensors[in_a], b.tensors[in_b]
        if ia.shape != ib.shape:
            raise ValueError(f"tensor {name!r}: shape {list(ia.shape)} in {a.path} but {list(ib.shape)} in {b.path}")
        if ia.dtype != ib.dtype and not allow_dtype_mismatch:
            raise ValueError(
                f"tensor {name!r}: dtype {ia.dtype} in {a.path} but {ib.dtype} in {b.path} "
                "(pass allow_dtype_mismatch=True to compare in float64 anyway)"
            )
    # Three float64 work buffers, reused for every chunk: allocating fresh chunk-sized tensors each time
    # lets the allocator's heap fragment and creep upwards with the number of tensors.
    scratch = [torch.empty(0, dtype=torch.float64) for _ in range(3)]
    records, rows = [], {}
    for name, in_a, in_b, note in aligned:
        layer, module, kind = parse_param_name(name)
        parts = fused_row_slices(module, a.config) if len(a.tensors[in_a].shape) >= 1 else {}
        want_rows = (module in row_modules or bool(parts)) and len(a.tensors[in_a].shape) >= 1
        sq_diff = sq_a = sq_b = 0.0
        row_diff, row_a, row_b = [], [], []
        for ca, cb in zip(a.iter_chunks(in_a, chunk_elems), b.iter_chunks(in_b, chunk_elems), strict=True):
            n = ca.numel()
            if scratch[0].numel() < n:
                scratch = [torch.empty(max(n, chunk_elems), dtype=torch.float64) for _ in range(3)]
            fa, fb, d = (buf[:n] for buf in scratch)
            fa.copy_(ca.reshape(-1))
            fb.copy_(cb.reshape(-1))
            rows_n = ca.shape[0] if ca.dim() else 1
            del ca, cb
            torch.sub(fa, fb, out=d)
            # Sums of squares as float64 dot products: one pass over each buffer, no squared copies.
            sq_diff += float(torch.dot(d, d))
            sq_a += float(torch.dot(fa, fa))
            sq_b += float(torch.dot(fb, fb))
            if want_rows:
                row_diff.append(_row_squares(d, rows_n))
                row_a.append(_row_squares(fa, rows_n))
                if parts:
                    row_b.append(_row_squares(fb, rows_n))
        info = a.tensors[in_a]
        if parts:
            rd, ra, rb = (np.concatenate(x) for x in (row_diff, row_a, row_b))
            if max(sl.stop for sl in parts.values()) != len(rd):
                raise ValueError(f"tensor {name!r}: {len(rd)} output rows, but the config's parts need "
                                 f"{ {k: v.stop - v.start for k, v in parts.items()} }")
            per_row = info.numel // len(rd)
            for part, sl in parts.items():
                pname = fused_part_name(name, module, part)
                if part in row_modules:
                    rows[pname] = (rd[sl], ra[sl])
                records.append({"tensor": pname, "layer": layer, "module": part, "kind": _KINDS[part],
                                "numel": (sl.stop - sl.start) * per_row, "dtype": info.dtype,
                                "sq_diff": float(rd[sl].sum()), "sq_a": float(ra[sl].sum()),
                                "sq_b": float(rb[sl].sum()), "note": f"rows {sl.start}:{sl.stop} of {name}"})
            continue
        if want_rows and row_diff:
            rows[name] = (np.concatenate(row_diff), np.concatenate(row_a))
        records.append({"tensor": name, "layer": layer, "module": module, "kind": kind,
                        "numel": info.numel, "dtype": info.dtype, "sq_diff": sq_diff,
                        "sq_a": sq_a, "sq_b": sq_b, "note": note})
    tensors = pd.DataFrame(records)
    tensors["layer"] = tensors["layer"].astype("Int64")
    return ParameterDifference(a.path, b.path, tensors, rows, a.config)



MEASURES = ("absolute", "relative")


def rank_layers(
    diff: ParameterDifference,
    modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    top_k: int = 10,
    measure: str = "absolute",
) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """Rank layers by change, separately per module; ``diff`` compares base (a) with Phase 1 (b).

    ``measure="absolute"`` (default, the paper's literal "changed the most") ranks by the Frobenius
    norm ||W_p1 - W_base||; ``"relative"`` divides by ||W_base|| so layers with larger weights are not
    favoured. Ties break towards the lower layer index. Returns ({module: top_k layer indices, most
    changed first}, table with module, layer, abs_change, base_norm, rel_change, rank). Fewer than
    ``top_k`` layers yields all of them.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    g = diff.by_layer_module()
    available = sorted(set(g["module"]))
    missing = [m for m in modules if m not in available]
    if missing:
        raise ValueError(f"no per-layer tensors for module(s) {missing}; modules present: {available}")
    table = g[g["module"].isin(list(modules))].rename(columns={"l2": "abs_change", "norm_a": "base_norm",
                                                               "relative": "rel_change"})
    table = table[["module", "layer", "abs_change", "base_norm", "rel_change"]].copy()
    table["layer"] = table["layer"].astype(int)
    col = "abs_change" if measure == "absolute" else "rel_change"
    table = table.sort_values(["module", col, "layer"], ascending=[True, False, True], kind="mergesort")
    table["rank"] = table.groupby("module").cumcount() + 1
    ranking = {m: table.loc[table["module"] == m, "layer"].head(top_k).tolist() for m in modules}
    return ranking, table.reset_index(drop=True)


def rank_heads(
    diff: ParameterDifference,
    modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    top_k: int = 10,
    measure: str = "absolute",
) -> tuple[dict[str, list[tuple[int, int]]], pd.DataFrame]:
    """Rank (layer, head) pairs by change, separately per module (see :meth:`ParameterDifference.by_head`)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    table = diff.by_head(modules).rename(columns={"l2": "abs_change", "norm_a": "base_norm",
                                                  "relative": "rel_change"})
    table = table[["module", "layer", "head", "abs_change", "base_norm", "rel_change"]]
    col = "abs_change" if measure == "absolute" else "rel_change"
    table = table.sort_values(["module", col, "layer", "head"], ascending=[True, False, True, True],
                              kind="mergesort")
    table["rank"] = table.groupby("module").cumcount() + 1
    ranking = {
        m: [(int(r.layer), int(r.head)) for r in table[table["module"] == m].head(top_k).itertuples()]
        for m in modules
    }
    return ranking, table.reset_index(drop=True)


def layer_change_ranking(
    base_dir: str | Path,
    phase1_dir: str | Path,
    modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    top_k: int = 10,
    measure: str = "absolute",
    **kwargs,
) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """The layers that changed most from base to Phase 1, per module (LF_H2's input); see :func:`rank_layers`."""
    diff = parameter_difference(base_dir, phase1_dir, row_modules=modules, **kwargs)
    return rank_layers(diff, modules, top_k, measure)
