"""Interpolation — post-hoc weight averaging of the Phase 1 and Phase 2 models, θ = (1 − α)·θ_P1 + α·θ_P2, one run
per α (label ``Interp_<α>``); streamed, no training (:func:`cft_utils.mitigation.posthoc.interpolate_checkpoints`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..base import Parameters, PosthocStrategy, register
from ..posthoc import interpolate_checkpoints


class Params(Parameters):
    """One run per α in [0, 1] (0: the Phase 1 model, 1: the Phase 2 model)."""

    alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: [0.25, 0.5, 0.75])


@register
class Interpolation(PosthocStrategy):
    """Interp_α: (1 − α)·θ_P1 + α·θ_P2, streamed."""

    name = "interpolation"
    label_prefix = "Interp"
    order = 60
    Params = Params

    def variants(self, params: Params, cell) -> list[tuple[str, dict]]:
        return self.numbered(params.alphas, "alpha")

    def apply(self, run, cfg, p1_dir, p2_dir, out_dir) -> dict:
        interpolate_checkpoints(p1_dir, p2_dir, run.variant.params["alpha"], out_dir)
        return {**run.variant.params}

    def summary(self, info: dict) -> dict:
        return {"alpha": info.get("alpha")}
