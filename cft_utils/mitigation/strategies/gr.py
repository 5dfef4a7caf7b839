"""GR_k — generative replay (paper §4.1): the Phase 1 model answers, in English, the English counterparts of the
Phase 2 instructions; k % of the Phase 2 set's size of these answers is added to Phase 2 (checked and counted:
:mod:`cft_utils.mitigation.replay`). Shared settings: ``mitigation.replay`` (counterparts, generation)."""

from __future__ import annotations

from ..base import register
from ..replay import Percent, PercentsParams, ReplayStrategy


class Params(PercentsParams):
    """GR's parameters: one run per share k (% of the Phase 2 set's size)."""

    percents: list[Percent] = [5.0, 10.0]


@register
class GenerativeReplay(ReplayStrategy):
    """GR_k: the Phase 1 model's English answers to the counterparts, added to Phase 2."""

    name = "GR"
    label_prefix = "GR"
    order = 30
    generative = True
    Params = Params
