"""Attention for padding-free training batches on CPU: each packed sequence attends only to itself.

With ``training.padding_free: true`` a batch is one row holding all its sequences, told apart by position ids that
restart at 0. With transformers' ``sdpa`` attention the model then builds a block-diagonal causal mask over the
whole row and the CPU kernel computes every query against every key of the row, masked or not: the attention cost
grows with the square of the row (16 sequences of ~72 tokens: a 1,155 x 1,155 score matrix per head instead of 16
of 72 x 72). On GPUs, flash attention's variable-length kernels avoid this; on CPU nothing in transformers does.

``sdpa_packed`` (registered with transformers' ``AttentionInterface``; ``training.attn_implementation``) runs
``torch.nn.functional.scaled_dot_product_attention`` once per packed sequence (causal, no mask) and concatenates
the outputs. Mathematically it is the same attention; numerically it differs from the masked kernel by float
rounding (another summation order). Rows that are not packed (a batch of several rows, or position ids that never
restart) go to transformers' own ``sdpa`` unchanged.

transformers builds the same masks for it as for ``sdpa`` (its mask function is registered too), so anything that
is not a packed training row (padded batches, generation with a cache) gets exactly ``sdpa``'s result. Runs switch
it on for their training only (``training_attention``): saved models keep ``sdpa`` in their configuration.
"""

from __future__ import annotations

from contextlib import contextmanager

NAME = "sdpa_packed"


def _segments(position_ids, length: int) -> list[tuple[int, int]] | None:
    """(start, end) of each packed sequence in a one-row batch, from position ids restarting at 0; None when the
    row is not packed that way."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] != length:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        return None
    return list(zip(starts, [*starts[1:], length], strict=True))


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention-interface function: per-sequence causal SDPA for a packed row (see the module)."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # A packed training row: one row, no cache (as many keys as queries), positions restarting at 0. Its mask (if
    # transformers built one) is the block-diagonal causal mask of those same positions, which the loop applies.
    segs = _segments(kwargs.get("position_ids"), query.shape[2]) if query.shape[2] == key.shape[2] else None
    if segs is None or len(segs) == 1 and attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=p,
                                           is_causal=True, scale=scaling, enable_gqa=gqa) for s, e in segs]
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``sdpa_packed`` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, packed_sdpa_forward)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


@contextmanager
def training_attention(model, implementation: str | None):
    """Use ``implementation`` in ``model`` inside the block and restore its own afterwards (so that saved models and
    generation use ``sdpa``). None leaves the model as it is."""
    if not implementation:
        yield model
        return
    if implementation == NAME:
        register()
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)
