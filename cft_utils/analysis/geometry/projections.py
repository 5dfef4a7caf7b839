"""Projections and separation of layer vectors: t-SNE and PCA views (Figures 1 and 3), separation scores, and the
per-layer distances between two models' mean vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

DEFAULT_PERPLEXITY = 30.0


def tsne_perplexity(n_points: int, default: float = DEFAULT_PERPLEXITY) -> float:
    """Perplexity rule: ``min(default, max(1, (n_points - 1) / 3))``.

    scikit-learn's Barnes-Hut t-SNE looks at ``3 * perplexity + 1`` neighbours and requires
    perplexity < n_points; capping at ``(n - 1) / 3`` keeps that neighbourhood within the other points
    (e.g. 2 models x 33 layers = 66 points -> 21.7; 2 x 5 = 10 points -> 3). Floor 1, ceiling ``default``.
    """
    if n_points < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {n_points}")
    return float(min(default, max(1.0, (n_points - 1) / 3.0)))


def tsne_embed(points: np.ndarray, *, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init, fixed seed) with the :func:`tsne_perplexity` rule by default."""
    from sklearn.manifold import TSNE

    points = np.asarray(points, dtype=np.float64)
    perp = tsne_perplexity(len(points)) if perplexity is None else float(perplexity)
    if not 0 < perp < len(points):
        raise ValueError(f"perplexity {perp} must be in (0, n_points={len(points)})")
    return TSNE(
        n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed
    ).fit_transform(points)


def pca_embed(points: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA coordinates ``[n, n_components]`` and explained-variance ratios (deterministic signs)."""
    from sklearn.decomposition import PCA

    points = np.asarray(points, dtype=np.float64)
    k = min(n_components, *points.shape)
    pca = PCA(n_components=k, svd_solver="full")
    coords = pca.fit_transform(points)
    if k < n_components:  # fewer points or features than components: pad with zeros
        coords = np.pad(coords, ((0, 0), (0, n_components - k)))
    ratios = np.pad(pca.explained_variance_ratio_, (0, n_components - k))
    return coords, ratios


def project_points(
    points: np.ndarray,
    meta: pd.DataFrame | Mapping[str, Sequence] | None = None,
    *,
    seed: int = 0,
    perplexity: float | None = None,
) -> pd.DataFrame:
    """Tidy frame: ``meta`` columns + ``tsne_x, tsne_y, pca_x, pca_y, perplexity, pc1_var, pc2_var``."""
    points = np.asarray(points, dtype=np.float64)
    frame = (
        pd.DataFrame(meta).reset_index(drop=True)
        if meta is not None
        else pd.DataFrame(index=range(len(points)))
    )
    if len(frame) != len(points):
        raise ValueError(f"meta has {len(frame)} rows for {len(points)} points")
    perp = tsne_perplexity(len(points)) if perplexity is None else float(perplexity)
    t = tsne_embed(points, seed=seed, perplexity=perp)
    p, ratios = pca_embed(points, 2)
    return frame.assign(
        tsne_x=t[:, 0],
        tsne_y=t[:, 1],
        pca_x=p[:, 0],
        pca_y=p[:, 1],
        perplexity=perp,
        pc1_var=ratios[0],
        pc2_var=ratios[1],
    )


def separation_score(points: np.ndarray, labels: Sequence) -> float:
    """Centroid distance over pooled within-cluster spread (a multivariate Cohen's d).

    ``score = min over label pairs ||c_i - c_j|| / s`` with ``s = sqrt(sum_k sum_{x in k} ||x - c_k||^2 / (N - K))``,
    the pooled root-mean-square distance of points to their own centroid (N points, K labels). With two
    labels it is the centroid distance in units of spread; with more, the least separated pair. Compute it
    in the original (or PCA) space, not on t-SNE coordinates, whose distances are not meaningful. NaN when
    undefined (N == K, or zero distance with zero spread); inf for distinct clusters of identical points.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    if points.ndim != 2 or len(points) != len(labels):
        raise ValueError(f"need points [n, d] and n labels, got {points.shape} and {labels.shape}")
    groups = list(dict.fromkeys(labels.tolist()))
    if len(groups) < 2:
        raise ValueError(f"separation needs at least 2 labels, got {groups}")
    centroids = np.stack([points[labels == g].mean(axis=0) for g in groups])
    within = sum(
        float(((points[labels == g] - c) ** 2).sum()) for g, c in zip(groups, centroids, strict=True)
    )
    dof = len(points) - len(groups)
    if dof <= 0:
        return float("nan")
    spread = np.sqrt(within / dof)
    dist = min(
        float(np.linalg.norm(centroids[i] - centroids[j]))
        for i in range(len(groups))
        for j in range(i + 1, len(groups))
    )
    if spread == 0:
        return float("nan") if dist == 0 else float("inf")
    return dist / spread


def paired_layer_distances(
    means_a: np.ndarray, means_b: np.ndarray, *, layers: Sequence[int] | None = None
) -> pd.DataFrame:
    """Tidy ``layer, euclidean, relative, cosine_distance`` between two models' layer-mean vectors.

    ``relative`` = ``||a - b|| / sqrt((||a||^2 + ||b||^2) / 2)``: the same layer's shift, free of the
    growth of activation norms with depth, a number beside the t-SNE picture of Figure 1.
    """
    a = np.asarray(means_a, dtype=np.float64)
    b = np.asarray(means_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [n_layers, hidden] arrays of one shape, got {a.shape} and {b.shape}")
    labels = list(range(len(a))) if layers is None else [int(x) for x in layers]
    diff = np.linalg.norm(a - b, axis=1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff / np.sqrt((na**2 + nb**2) / 2)
        cos = 1 - (a * b).sum(axis=1) / (na * nb)
    return pd.DataFrame({"layer": labels, "euclidean": diff, "relative": rel, "cosine_distance": cos})
