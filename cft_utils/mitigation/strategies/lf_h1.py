"""LF_H1 — layer freezing, hypothesis 1 (paper §4.2): a seeded random set of the budget's layers is frozen in
Phase 2 (the whole decoder block, or only its q/k/v projections). Shared settings: ``mitigation.freezing`` (the
budget and modules); mechanics: :mod:`cft_utils.mitigation.freeze`."""

from __future__ import annotations

from typing import Literal

from ...plan import phase1_model_dir
from ..base import Cell, Parameters, register
from ..freeze import FreezePlan, FreezingStrategy, model_layer_count, select_lf_h1


class Params(Parameters):
    """LF_H1's parameters (the budget itself is shared: ``mitigation.freezing``)."""

    scope: Literal["block", "qkv"] = "block"  # freeze the whole decoder block, or only its q/k/v projections


@register
class RandomLayers(FreezingStrategy):
    """LF_H1: a seeded random choice of the budget's layers is frozen."""

    name = "LF_H1"
    order = 10
    Params = Params

    def variants(self, params: Params, cell: Cell) -> list[tuple[str, dict]]:
        return [(self.name, {**self.budget(cell), "scope": params.scope, "freeze_seed": cell.cfg.mitigation.seed})]

    def freeze_plan(self, run, cfg) -> FreezePlan:
        p = run.variant.params
        n_layers = model_layer_count(phase1_model_dir(cfg, run.parent))
        layers = select_lf_h1(n_layers, p["n_frozen_layers"], p["freeze_seed"])
        details = {"k": p["n_frozen_layers"], "num_layers": n_layers}
        if p["scope"] == "block":
            return FreezePlan(self.name, blocks=layers, details=details)
        return FreezePlan(self.name, modules={m: layers for m in p["modules"]}, details=details)
