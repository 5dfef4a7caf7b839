"""MPD, the paper's model parameter difference (§3.3), across models fine-tuned from one base.

For two models fine-tuned from the same base on D1 and D2, MPD is the L2 norm of the difference of all their
parameters, normalised by the largest value among the compared models. The paper's equation (2) was lost from its
text; we read it as ``||θ(M1) - θ(M2)||₂`` over every stored parameter tensor. The per-tensor streaming difference
itself (:func:`cft_utils.checkpoints.parameter_difference`) lives in the bottom layer, because layer freezing and
the post-hoc strategies use it too; this module compares several models with one reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cft_utils.checkpoints import ParameterDifference, parameter_difference


@dataclass
class MPDComparison:
    """Models fine-tuned from one base, each compared with a reference model (and with the base).

    ``to_reference[name]`` is ``parameter_difference(model, reference)``; ``from_base[name]`` is
    ``parameter_difference(base, model)`` for every model and the reference (empty without a base).
    """

    reference_name: str
    to_reference: dict[str, ParameterDifference]
    from_base: dict[str, ParameterDifference]

    def table(self) -> pd.DataFrame:
        """One row per model: mpd = ||θ_model - θ_ref||₂, mpd_normalised (÷ max over models), drifts.

        ``drift_from_base`` = ||θ_model - θ_base||, ``reference_drift`` = ||θ_ref - θ_base||, and
        ``update_cosine`` the cosine between the two fine-tuning updates (θ_model - θ_base and
        θ_ref - θ_base), derived from the three norms. Missing without a base: NaN, never 0.
        """
        rows = []
        ref_drift = (self.from_base[self.reference_name].total_l2
                     if self.reference_name in self.from_base else math.nan)
        for name, diff in self.to_reference.items():
            drift = self.from_base[name].total_l2 if name in self.from_base else math.nan
            denom = 2 * drift * ref_drift
            cosine = ((drift**2 + ref_drift**2 - diff.total_sq) / denom
                      if denom > 0 and math.isfinite(denom) else math.nan)
            rows.append({"model": name, "reference": self.reference_name, "mpd": diff.total_l2,
                         "drift_from_base": drift, "reference_drift": ref_drift, "update_cosine": cosine})
        df = pd.DataFrame(rows)
        top = df["mpd"].max()
        df.insert(3, "mpd_normalised", df["mpd"] / top if top > 0 else math.nan)
        return df

    def profile(self, level: str = "layer") -> pd.DataFrame:
        """Tidy per-``level`` ("layer", "kind" or "layer_module") MPD of every model to the reference."""
        methods = {"layer": "by_layer", "kind": "by_kind", "layer_module": "by_layer_module"}
        if level not in methods:
            raise ValueError(f"level must be one of {sorted(methods)}, got {level!r}")
        parts = []
        for name, diff in self.to_reference.items():
            g = getattr(diff, methods[level])()
            g.insert(0, "model", name)
            g.insert(1, "reference", self.reference_name)
            parts.append(g[[c for c in g.columns if c not in ("sq_a", "sq_b")]])
        return pd.concat(parts, ignore_index=True)


def compare_models(
    base_dir: str | Path | None,
    finetuned: Mapping[str, str | Path],
    reference_dir: str | Path,
    reference_name: str = "reference",
    **kwargs,
) -> MPDComparison:
    """Stream every fine-tuned model against the reference (and, given a base, against the base)."""
    if not finetuned:
        raise ValueError("compare_models needs at least one fine-tuned model")
    if reference_name in finetuned:
        raise ValueError(f"reference_name {reference_name!r} clashes with a fine-tuned model's name")
    to_ref = {name: parameter_difference(d, reference_dir, **kwargs) for name, d in finetuned.items()}
    from_base = {}
    if base_dir is not None:
        for name, d in {**finetuned, reference_name: reference_dir}.items():
            from_base[name] = parameter_difference(base_dir, d, **kwargs)
    return MPDComparison(reference_name, to_ref, from_base)


def mpd_table(
    base_dir: str | Path | None,
    finetuned: Mapping[str, str | Path],
    reference_dir: str | Path,
    reference_name: str = "reference",
    **kwargs,
) -> pd.DataFrame:
    """The paper's MPD: ||θ_model - θ_ref||₂ for each fine-tuned model, normalised by the maximum.

    Shorthand for ``compare_models(...).table()``; use :func:`compare_models` for per-layer profiles.
    """
    return compare_models(base_dir, finetuned, reference_dir, reference_name, **kwargs).table()
