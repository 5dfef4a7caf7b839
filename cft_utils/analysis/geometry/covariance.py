"""Layer-wise covariances streamed over batches, the norms of their differences, and linear CKA.

**Covariance memory.** A hidden size of 4096 means 128 MiB per layer for a float64 ``hidden x hidden`` matrix,
4.2 GiB for 33 layers. :func:`layer_covariances` keeps each layer's accumulator in RAM by default (right for the
sandbox) or, with ``out_dir=``, in one memory-mapped ``.npy`` per layer on disk. We chose disk over recomputation:
Figure 2 compares each Phase 2 model with both its Phase 1 model and the base model, so a model's covariances are
reused, and a forward pass of a 7-8B model is the expensive part, while 4.2 GiB of disk per model is cheap.
:func:`covariance_difference_norms` then reads one layer of each model at a time (peak RAM: a few
``hidden x hidden`` matrices). Where disk is short, pass ``layers=`` to compute a group of layers per pass and
recompute the forward passes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cft_utils.analysis.geometry import capture
from cft_utils.io import read_json, write_json

NORMS = ("frobenius", "spectral")


class CovarianceAccumulator:
    """Streaming covariance of ``hidden``-dim samples: count, sum and sum of outer products in float64.

    Samples are buffered (``buffer_size`` rows at most) and folded in with one matrix product per flush, so
    memory is ``hidden^2`` float64 plus the buffer, never every sample. Values are shifted by the first
    flush's mean before summing (covariance is shift-invariant); this keeps the
    ``sum_outer - n * mean mean^T`` formula accurate when activations have a large mean, as LLM residual
    streams do. ``path=`` keeps the outer-product matrix in a memory-mapped ``.npy`` file instead of RAM.
    """

    def __init__(self, hidden: int, *, path: str | os.PathLike | None = None, buffer_size: int = 512):
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden = int(hidden)
        self.buffer_size = max(1, int(buffer_size))
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(self.hidden, dtype=np.float64)
        self.path = Path(path) if path is not None else None
        if self.path is None:
            self.outer = np.zeros((self.hidden, self.hidden), dtype=np.float64)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.outer = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.float64, shape=(self.hidden,) * 2
            )
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._finalised = False

    def update(self, x) -> None:
        """Add samples ``x`` of shape ``[batch, hidden]`` (numpy or torch)."""
        if self._finalised:
            raise RuntimeError("this accumulator was finalised in place; create a new one")
        if hasattr(x, "detach"):
            x = x.detach().float().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.hidden:
            raise ValueError(f"expected samples of shape [batch, {self.hidden}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("samples contain NaN or inf")
        if len(x) == 0:
            return
        self._buffer.append(x)
        self._buffered += len(x)
        if self._buffered >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered samples into the sums."""
        if not self._buffer:
            return
        x = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        if self.shift is None:
            self.shift = x.mean(axis=0)
        xc = x - self.shift
        self.count += len(xc)
        self.sum += xc.sum(axis=0)
        self.outer += xc.T @ xc

    def mean(self) -> np.ndarray:
        """Mean of the samples seen so far."""
        self.flush()
        if self.count == 0:
            raise ValueError("no samples accumulated")
        return self.shift + self.sum / self.count

    def covariance(self, ddof: int = 1, *, inplace: bool = False) -> np.ndarray:
        """Mean-centred covariance ``sum (x - mean)(x - mean)^T / (n - ddof)``; ddof=1 equals ``numpy.cov``.

        ``inplace=True`` overwrites the outer-product buffer (RAM or memmap) instead of allocating another
        ``hidden^2`` matrix; the accumulator cannot be updated afterwards.
        """
        self.flush()
        if self.count - ddof <= 0:
            raise ValueError(f"covariance needs more than {ddof} samples, got {self.count}")
        m = self.sum / self.count  # mean of the shifted samples
        if inplace:
            out = self.outer
            out -= self.count * np.outer(m, m)
            out /= self.count - ddof
            self._finalised = True
            if isinstance(out, np.memmap):
                out.flush()
            return out
        return (self.outer - self.count * np.outer(m, m)) / (self.count - ddof)


def prompts_digest(prompts: Sequence[Any]) -> str:
    """SHA-256 of the normalised prompts: the identity of a prompt set in cache signatures."""
    norm = [capture.normalise_prompt(p, i) for i, p in enumerate(prompts)]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def layer_file(out_dir: Path, layer: int) -> Path:
    """The file of one layer's covariance in a cache folder."""
    return out_dir / f"cov_layer{layer:03d}.npy"


def load_layer_covariances(out_dir: str | os.PathLike) -> tuple[list[np.ndarray], dict]:
    """Read-only memory maps of the per-layer covariances in ``out_dir`` (in ``meta["layers"]`` order) and the meta."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{out_dir}: no meta.json, so no complete set of layer covariances")
    meta = read_json(meta_path)
    covs = []
    for layer in meta["layers"]:
        f = layer_file(out_dir, layer)
        if not f.exists():
            raise FileNotFoundError(f"{out_dir}: meta.json lists layer {layer} but {f.name} is missing")
        covs.append(np.load(f, mmap_mode="r"))
    return covs, meta


def layer_covariances(
    model,
    tokenizer,
    prompts,
    *,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    buffer_size: int = 512,
    **kwargs,
) -> list[np.ndarray]:
    """Per-layer covariance ``[hidden, hidden]`` (float64) of the sample vectors, in one pass over batches.

    In RAM by default. With ``out_dir`` every layer's accumulator is a memory-mapped ``cov_layerNNN.npy``
    there, finalised in place, and the result is a list of read-only memory maps; ``meta.json`` is written
    last and makes the directory reusable: a later call with the same model, prompts and settings loads it
    instead of recomputing (``overwrite=True`` forces a recomputation). Other keyword arguments as in
    :func:`iteractivation_batches`.
    """
    out_path = Path(out_dir) if out_dir is not None else None
    model, tokenizer, model_id = capture.resolve_model(
        model, tokenizer, kwargs.get("device"), kwargs.pop("dtype", None)
    )
    signature = {
        "model": model_id,
        "n_samples": len(prompts),
        "prompts_sha256": prompts_digest(prompts),
        "position": kwargs.get("position", "mean"),
        "requested_layers": None if kwargs.get("layers") is None else [int(x) for x in kwargs["layers"]],
        "chat": kwargs.get("chat"),
        "add_generation_prompt": kwargs.get("add_generation_prompt", True),
        "max_length": kwargs.get("max_length"),
    }
    if out_path is not None and not overwrite and (out_path / "meta.json").exists():
        covs, meta = load_layer_covariances(out_path)
        if all(meta.get(k) == v for k, v in signature.items()):
            return covs
    if out_path is not None and (out_path / "meta.json").exists():
        (out_path / "meta.json").unlink()  # stale or forced: the directory is incomplete until rewritten

    accs: list[CovarianceAccumulator] | None = None
    layers: list[int] = []
    for layers, arr in capture.activation_batches(model, tokenizer, prompts, **kwargs):
        if accs is None:
            hidden = arr.shape[-1]
            accs = [
                CovarianceAccumulator(
                    hidden,
                    buffer_size=buffer_size,
                    path=None
                    if out_path is None
                    else out_path / f".{layer_file(out_path, layer).name}.partial",
                )
                for layer in layers
            ]
        for acc, x in zip(accs, arr, strict=True):
            acc.update(x)
    assert accs is not None
    if out_path is None:
        return [acc.covariance(inplace=True) for acc in accs]
    for layer, acc in zip(layers, accs, strict=True):
        acc.covariance(inplace=True)
        partial = acc.path
        del acc.outer  # close the memmap before renaming it into place
        os.replace(partial, layer_file(out_path, layer))
    write_json(
        out_path / "meta.json",
        {**signature, "layers": layers, "hidden": accs[0].hidden, "count": accs[0].count},
    )
    return load_layer_covariances(out_path)[0]




def spectral_norm(m: np.ndarray, *, dense_limit: int = 1024) -> float:
    """Largest singular value of ``m``; for large symmetric matrices via Lanczos (``eigsh``), else dense."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {m.shape}")
    if not np.any(m):
        return 0.0
    symmetric = m.shape[0] == m.shape[1] and np.allclose(m, m.T, rtol=1e-10, atol=1e-12 * np.abs(m).max())
    if symmetric and m.shape[0] > dense_limit:
        from scipy.sparse.linalg import eigsh

        # For a symmetric matrix the largest singular value is the largest |eigenvalue|. A fixed start
        # vector keeps the result deterministic.
        v0 = np.random.default_rng(0).standard_normal(m.shape[0])
        vals = eigsh(m, k=1, which="LM", v0=v0, return_eigenvectors=False, tol=1e-10)
        return float(np.abs(vals).max())
    if symmetric:
        return float(np.abs(np.linalg.eigvalsh(m)).max())
    return float(np.linalg.norm(m, ord=2))


def covariance_difference_norms(
    cov_a_layers: Sequence[np.ndarray],
    cov_b_layers: Sequence[np.ndarray],
    *,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Tidy ``layer, frobenius, spectral`` of ``Sigma_A - Sigma_B`` per layer, one layer in memory at a time.

    ``layers`` labels the rows (default 0..n-1, i.e. hidden-state indices when all layers were computed).
    """
    if len(cov_a_layers) != len(cov_b_layers):
        raise ValueError(f"different numbers of layers: {len(cov_a_layers)} vs {len(cov_b_layers)}")
    labels = list(range(len(cov_a_layers))) if layers is None else [int(x) for x in layers]
    if len(labels) != len(cov_a_layers):
        raise ValueError(f"{len(labels)} layer labels for {len(cov_a_layers)} layers")
    rows = []
    for label, a, b in zip(labels, cov_a_layers, cov_b_layers, strict=True):
        if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(
                f"layer {label}: covariance shapes {a.shape} and {b.shape} differ or are not square"
            )
        d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        rows.append({"layer": label, "frobenius": float(np.linalg.norm(d)), "spectral": spectral_norm(d)})
        del d
    return pd.DataFrame(rows, columns=["layer", "frobenius", "spectral"])


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations ``[n_samples, features]`` of the same samples.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``; computed through the
    ``n x n`` Gram matrices when samples are fewer than features. NaN when either side has no variance.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need two [n_samples, features] arrays with the same n_samples, got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 2:
        raise ValueError("CKA needs at least 2 samples")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        k, l_ = x @ x.T, y @ y.T
        hsic, xx, yy = np.sum(k * l_), np.sum(k * k), np.sum(l_ * l_)
    else:
        hsic = np.sum((y.T @ x) ** 2)
        xx, yy = np.sum((x.T @ x) ** 2), np.sum((y.T @ y) ** 2)
    denom = np.sqrt(xx) * np.sqrt(yy)
    if denom == 0:
        return float("nan")
    return float(hsic / denom)


def layerwise_cka(
    acts_a: Sequence[np.ndarray], acts_b: Sequence[np.ndarray], *, layers: Sequence[int] | None = None
) -> pd.DataFrame:
    """Tidy ``layer, cka`` between two models' per-sample vectors (e.g. :func:`capture_activations` outputs)."""
    if len(acts_a) != len(acts_b):
        raise ValueError(f"different numbers of layers: {len(acts_a)} vs {len(acts_b)}")
    labels = list(range(len(acts_a))) if layers is None else [int(x) for x in layers]
    return pd.DataFrame(
        {"layer": labels, "cka": [linear_cka(a, b) for a, b in zip(acts_a, acts_b, strict=True)]}
    )
