"""ER_k — English replay, the best-case baseline of generative replay: the same share of English counterparts,
with their original English responses (:mod:`cft_utils.mitigation.replay`). Shared settings:
``mitigation.replay.counterparts``."""

from __future__ import annotations

from ..base import register
from ..replay import Percent, PercentsParams, ReplayStrategy


class Params(PercentsParams):
    """ER's parameters: one run per share k (% of the Phase 2 set's size)."""

    percents: list[Percent] = [10.0]


@register
class EnglishReplay(ReplayStrategy):
    """ER_k: the counterparts' original English answers, added to Phase 2."""

    name = "ER"
    label_prefix = "ER"
    order = 50
    Params = Params
