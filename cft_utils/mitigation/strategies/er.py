"""ER_k — English replay, the best-case baseline of generative replay: the same share of English counterparts,
with their original English responses (:mod:`cft_utils.mitigation.replay`). Shared settings:
``mitigation.replay.counterparts``."""

from __future__ import annotations

from ..base import register
from ..replay import Percent, PercentsParams, ReplayStrategy


class Params(PercentsParams):
    percents: list[Percent] = [10.0]


@register
class EnglishReplay(ReplayStrategy):
    name = "ER"
    label_prefix = "ER"
    order = 50
    Params = Params
