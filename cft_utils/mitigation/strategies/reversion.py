"""Reversion — post-hoc: the Phase 2 model with its most-moved units (projections, or whole layers) reset to their
Phase 1 values, one run per share of units (label ``Revert_<amount>``); streamed, no training
(:func:`cft_utils.mitigation.posthoc.revert_checkpoint`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..base import Parameters, PosthocStrategy, register
from ..posthoc import revert_checkpoint


class Params(Parameters):
    """One run per share of units reset; how units are ranked and what a unit is."""

    amounts: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.25])  # share of units
    criterion: Literal["relative_update", "absolute_update"] = "relative_update"  # ||ΔW|| / ||W_P1||, or ||ΔW||
    granularity: Literal["module", "layer"] = "module"


@register
class Reversion(PosthocStrategy):
    """Revert_a: the Phase 2 model with its most-moved units reset to Phase 1."""

    name = "reversion"
    label_prefix = "Revert"
    order = 70
    Params = Params

    def variants(self, params: Params, cell) -> list[tuple[str, dict]]:
        return self.numbered(params.amounts, "amount", criterion=params.criterion, granularity=params.granularity)

    def apply(self, run, cfg, p1_dir, p2_dir, out_dir) -> dict:
        p = run.variant.params
        res = revert_checkpoint(p1_dir, p2_dir, out_dir, p["amount"], p["criterion"], p["granularity"])
        return {**p, "reverted_units": res["reverted_units"], "reverted_tensors": res["reverted_tensors"],
                "ranking": res["ranking"].drop(columns=["tensors"]).to_dict("records")}

    def summary(self, info: dict) -> dict:
        return {"reverted": ", ".join(info.get("reverted_units", []))}
