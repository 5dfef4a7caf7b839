"""Layer profiles: one forward pass per model gives per-sample vectors (for CKA and layer means) and streaming
covariances of every layer, cached on disk so that Figures 1, 2, C4 and a rerun share forward passes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cft_utils.analysis.geometry import capture
from cft_utils.analysis.geometry.covariance import (
    CovarianceAccumulator,
    covariance_difference_norms,
    layer_file,
    layerwise_cka,
    prompts_digest,
)
from cft_utils.analysis.geometry.projections import paired_layer_distances
from cft_utils.io import read_json, write_json


class LayerProfile:
    """One model's view of a prompt set: per-sample vectors ``[n_layers, n, hidden]`` and per-layer covariances.

    ``activations`` and ``covariances`` are read-only memory maps when the profile was cached on disk.
    """

    def __init__(self, source: str, layers: list[int], activations: np.ndarray,
                 covariances: list[np.ndarray], meta: dict):
        self.source, self.layers, self.activations, self.covariances, self.meta = (
            source, layers, activations, covariances, meta)

    @property
    def means(self) -> np.ndarray:
        """Mean sample vector of each layer, float64 ``[n_layers, hidden]`` (the points of Figure 1)."""
        return np.asarray(self.activations, dtype=np.float64).mean(axis=1)

    def __repr__(self) -> str:
        shape = tuple(self.activations.shape)
        return f"LayerProfile({self.source!r}, layers={self.layers}, activations={shape})"


def _source_id(model) -> str | None:
    if isinstance(model, (str, os.PathLike)):
        return str(model) if capture.is_hub_id(model) else str(Path(model).resolve())
    return None


def _profile_signature(model_id: str, prompts, kwargs: Mapping[str, Any], dtype: Any) -> dict:
    return {
        "model": model_id,
        "n_samples": len(prompts),
        "prompts_sha256": prompts_digest(prompts),
        "position": kwargs.get("position", "mean"),
        "requested_layers": None if kwargs.get("layers") is None else [int(x) for x in kwargs["layers"]],
        "chat": kwargs.get("chat"),
        "add_generation_prompt": kwargs.get("add_generation_prompt", True),
        "max_length": kwargs.get("max_length"),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }


def load_layer_profile(out_dir: str | os.PathLike) -> LayerProfile:
    """A cached :class:`LayerProfile` (memory-mapped) from ``out_dir``; FileNotFoundError if incomplete."""
    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").exists():
        raise FileNotFoundError(f"{out_dir}: no meta.json, so no complete layer profile")
    meta = read_json(out_dir / "meta.json")
    acts = np.load(out_dir / "activations.npy", mmap_mode="r")
    covs = [np.load(layer_file(out_dir, layer), mmap_mode="r") for layer in meta["layers"]]
    return LayerProfile(meta["model"], list(meta["layers"]), acts, covs, meta)


def layer_profile(
    model,
    tokenizer,
    prompts,
    *,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    buffer_size: int = 512,
    **kwargs,
) -> LayerProfile:
    """Per-sample vectors and streaming covariances of every selected layer, from one pass over the prompts.

    ``model`` is a loaded model or a saved directory / hub id. With ``out_dir`` the result is cached there
    (``activations.npy``, one ``cov_layerNNN.npy`` per layer, ``meta.json`` written last) and reused, without
    loading the model, when the model, prompts and settings match. Per-sample vectors are kept because CKA
    needs them (n_prompts x n_layers x hidden float32: 43 MB for 80 prompts, 33 layers, hidden 4096); the
    covariances never need every activation (see :class:`CovarianceAccumulator`). Other keyword arguments as
    in :func:`iteractivation_batches`.
    """
    out_path = Path(out_dir) if out_dir is not None else None
    dtype = kwargs.pop("dtype", None)
    model_id = _source_id(model)
    if out_path is not None and model_id is not None and not overwrite and (out_path / "meta.json").exists():
        cached = load_layer_profile(out_path)
        if all(cached.meta.get(k) == v for k, v in _profile_signature(model_id, prompts, kwargs, dtype).items()):
            return cached
    model, tokenizer, resolved_id = capture.resolve_model(model, tokenizer, kwargs.get("device"), dtype)
    signature = _profile_signature(model_id or resolved_id, prompts, kwargs, dtype)
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / "meta.json").unlink(missing_ok=True)  # incomplete until rewritten
    accs: list[CovarianceAccumulator] = []
    acts: np.ndarray | None = None
    layers: list[int] = []
    filled = 0
    for layers, arr in capture.activation_batches(model, tokenizer, prompts, **kwargs):
        if acts is None:
            shape = (arr.shape[0], len(prompts), arr.shape[-1])
            acts = (np.zeros(shape, dtype=np.float32) if out_path is None else np.lib.format.open_memmap(
                out_path / ".activations.npy.partial", mode="w+", dtype=np.float32, shape=shape))
            accs = [CovarianceAccumulator(
                shape[-1], buffer_size=buffer_size,
                path=None if out_path is None else out_path / f".{layer_file(out_path, layer).name}.partial")
                for layer in layers]
        acts[:, filled:filled + arr.shape[1]] = arr
        filled += arr.shape[1]
        for acc, x in zip(accs, arr, strict=True):
            acc.update(x)
    assert acts is not None and filled == len(prompts)
    if out_path is None:
        covs = [acc.covariance(inplace=True) for acc in accs]
        return LayerProfile(signature["model"], layers, acts, covs,
                            {**signature, "layers": layers, "hidden": acts.shape[-1]})
    for layer, acc in zip(layers, accs, strict=True):
        acc.covariance(inplace=True)
        partial = acc.path
        del acc.outer  # close the memmap before renaming it into place
        os.replace(partial, layer_file(out_path, layer))
    acts.flush()
    del acts
    os.replace(out_path / ".activations.npy.partial", out_path / "activations.npy")
    write_json(out_path / "meta.json", {**signature, "layers": layers, "hidden": accs[0].hidden})
    return load_layer_profile(out_path)


def _slug(source: str) -> str:
    parts = Path(source).parts[-2:] if not capture.is_hub_id(source) else source.split("/")
    return re.sub(r"[^\w.-]+", "-", "--".join(parts))[:80]


def profile_models(
    sources: Sequence[str | os.PathLike],
    prompts,
    *,
    cache_root: str | os.PathLike | None = None,
    profiles: dict[str, LayerProfile] | None = None,
    dtype: Any = "float32",
    **kwargs,
) -> dict[str, LayerProfile]:
    """:func:`layer_profile` of each distinct source (directory or hub id), one model in memory at a time.

    Returns (and fills, when given) ``profiles`` keyed by ``str(source)``; a source already there is not
    recomputed. With ``cache_root`` each profile is cached in ``<cache_root>/<slug>-<hash>/`` so that Figure 2,
    Figure C4 and a rerun of the notebook share forward passes. ``dtype`` defaults to float32 (see the module
    notes on bfloat16 and padding). Other keyword arguments as in :func:`iteractivation_batches`.
    """
    import gc

    out = profiles if profiles is not None else {}
    for src in dict.fromkeys(str(s) for s in sources):
        if src in out:
            continue
        out_dir = None
        if cache_root is not None:
            sig = _profile_signature(_source_id(src), prompts, kwargs, dtype)
            digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:16]
            out_dir = Path(cache_root) / f"{_slug(src)}-{digest}"
        out[src] = layer_profile(src, None, prompts, out_dir=out_dir, dtype=dtype, **{"desc": _slug(src), **kwargs})
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    return out


def compare_profiles(a: LayerProfile, b: LayerProfile) -> pd.DataFrame:
    """Per layer: ``frobenius``, ``spectral`` (of Sigma_a - Sigma_b), linear ``cka`` and layer-mean shifts."""
    if a.layers != b.layers:
        raise ValueError(f"profiles of different layers: {a.layers} ({a.source}) vs {b.layers} ({b.source})")
    if a.activations.shape[:2] != b.activations.shape[:2] or a.meta.get("prompts_sha256") != b.meta.get(
            "prompts_sha256"):
        raise ValueError(f"profiles of different prompt sets: {a.source} and {b.source}")
    norms = covariance_difference_norms(a.covariances, b.covariances, layers=a.layers)
    cka = layerwise_cka(a.activations, b.activations, layers=a.layers)
    shift = paired_layer_distances(a.means, b.means, layers=a.layers)
    return norms.merge(cka, on="layer").merge(shift, on="layer")
