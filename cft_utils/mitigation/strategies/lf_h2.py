"""LF_H2 — layer freezing, hypothesis 2 (paper §4.2): the budget's layers whose q_proj (and separately k_proj,
v_proj) changed most from the base model to the Phase 1 model are frozen in Phase 2; with ``granularity: head``
the rows of the same number of most-changed heads are frozen by gradient masking (label ``LF_H2-head``).
Shared settings: ``mitigation.freezing``; the selector: :func:`cft_utils.mitigation.freeze.select_lf_h2`."""

from __future__ import annotations

from typing import Literal

from ...plan import base_model_source, phase1_model_dir
from ..base import Cell, Parameters, register
from ..freeze import FreezePlan, FreezingStrategy, model_layer_count, select_lf_h2


class Params(Parameters):
    """LF_H2's parameters (the budget itself is shared: ``mitigation.freezing``)."""

    granularity: Literal["layer", "head"] = "layer"  # whole projections of the chosen layers, or head rows
    measure: Literal["absolute", "relative"] = "absolute"  # ||W_p1 - W_base||, or divided by ||W_base||


@register
class MostChangedLayers(FreezingStrategy):
    """LF_H2: the layers (or heads) that changed most base -> Phase 1 are frozen."""

    name = "LF_H2"
    order = 20
    Params = Params

    def variants(self, params: Params, cell: Cell) -> list[tuple[str, dict]]:
        label = "LF_H2-head" if params.granularity == "head" else self.name
        return [(label, {**self.budget(cell), "granularity": params.granularity, "measure": params.measure})]

    def sort_value(self, label: str) -> float | None:
        return {"LF_H2": 0.0, "LF_H2-head": 1.0}.get(label)

    def freeze_plan(self, run, cfg) -> FreezePlan:
        p = run.variant.params
        p1 = phase1_model_dir(cfg, run.parent)
        if p["n_frozen_layers"] > model_layer_count(p1):
            raise ValueError(f"{run.name}: cannot freeze {p['n_frozen_layers']} of {model_layer_count(p1)} layers")
        return select_lf_h2(base_model_source(cfg, run.model), p1, p["n_frozen_layers"], p["modules"], p["measure"],
                            p["granularity"])
