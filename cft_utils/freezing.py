"""Layer freezing in Phase 2 (LF_H1, LF_H2), by layer or by attention head.

* **LF_H1** — a seeded random set of ``k`` decoder layers is frozen (the whole block, or only its q/k/v
  projections: ``mitigation.freezing.h1_scope``).
* **LF_H2** — the ``k`` layers whose q_proj (and separately k_proj, v_proj) changed most from the base model to
  the Phase 1 model are frozen, per projection (:func:`cft_utils.similarity.layer_change_ranking`, streamed from
  safetensors). For the sandbox Instruct model the "base" is the sandbox base model it was trained from; for the
  paper's Instruct models it is the matching base model (Mistral-7B -> Mistral-7B-Instruct).
* **Per-head granularity** — instead of whole projections, the rows of the ``k x heads-per-layer`` most-changed
  heads (the same budget) are frozen: a hook on the parameter's gradient zeroes those rows, so neither the
  update nor the gradient-norm clipping sees them. AdamW's decoupled weight decay would still shrink them
  (``p -= lr * wd * p`` needs no gradient), so :class:`FreezeCallback` also writes the saved rows back after
  every optimizer step; with weight decay 0 the write-back is a no-op.

How it is made safe: frozen tensors get ``requires_grad_(False)``, so the Trainer gives the optimizer only the
others (it never holds state for them; :class:`FreezeCallback` checks the optimizer's ``param_groups`` and
``state`` when training starts and ends); after the run :func:`verify_frozen` streams both checkpoints and
checks every frozen tensor and masked row with ``torch.equal`` (bit-identical).

Distributed training: DDP works (frozen parameters are left out of the gradient all-reduce; masked rows are
zero on every rank). FSDP works for layer freezing only with ``use_orig_params`` (FSDP 1 otherwise flattens a
unit's parameters into one tensor that cannot be half frozen); per-head masking under FSDP is refused (the
sharded flat gradient bypasses per-parameter hooks). DeepSpeed ZeRO is refused: ZeRO partitions gradients and
optimizer states itself and this module has no test that frozen tensors stay bit-identical under it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .similarity import parse_param_name

QKV = ("q_proj", "k_proj", "v_proj")


class FreezingUnsupported(RuntimeError):
    """Freezing was asked for under a distributed setup where it is not guaranteed to work."""


# ------------------------------------------------------------------------------------------- selection


def n_frozen_layers(num_layers: int, n_layers: int | None = None, fraction: float | None = None) -> int:
    """How many layers to freeze: ``n_layers``, or ``fraction`` of the model's layers rounded half up (>= 1)."""
    if (n_layers is None) == (fraction is None):
        raise ValueError("give exactly one of n_layers and fraction")
    k = n_layers if n_layers is not None else max(1, int(num_layers * fraction + 0.5))
    if not 1 <= k <= num_layers:
        raise ValueError(f"cannot freeze {k} of {num_layers} layers")
    return k


def select_lf_h1(num_layers: int, k: int, seed: int) -> list[int]:
    """LF_H1: ``k`` distinct layer indices drawn with ``seed`` (sorted)."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"cannot choose {k} of {num_layers} layers")
    return sorted(random.Random(f"lf_h1-{seed}").sample(range(num_layers), k))


def select_lf_h2(base_dir: str | Path, phase1_dir: str | Path, k: int, modules: Sequence[str] = QKV,
                 measure: str = "absolute") -> tuple[dict[str, list[int]], object]:
    """LF_H2: per module, the ``k`` layers that changed most from base to Phase 1 (most changed first)."""
    from .similarity import layer_change_ranking

    return layer_change_ranking(base_dir, phase1_dir, modules=modules, top_k=k, measure=measure)


def select_lf_h2_heads(base_dir: str | Path, phase1_dir: str | Path, n_heads: int, modules: Sequence[str] = QKV,
                       measure: str = "absolute") -> tuple[dict[str, list[tuple[int, int]]], object]:
    """LF_H2 per head: per module, the ``n_heads`` (layer, head) pairs that changed most from base to Phase 1."""
    from .similarity import parameter_difference, rank_heads

    diff = parameter_difference(base_dir, phase1_dir, row_modules=modules)
    return rank_heads(diff, modules, top_k=n_heads, measure=measure)


@dataclass
class FreezePlan:
    """What to freeze: whole tensors by (layer, module), whole blocks, and head rows by (module, layer, head).

    ``blocks``: decoder layer indices frozen entirely. ``modules``: {module leaf: layers} frozen as whole
    projections. ``heads``: {module leaf: [(layer, head), ...]} frozen row-wise by gradient masking.
    """

    strategy: str
    blocks: list[int] = field(default_factory=list)
    modules: dict[str, list[int]] = field(default_factory=dict)
    heads: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "blocks": self.blocks, "modules": self.modules,
                "heads": {m: [list(x) for x in v] for m, v in self.heads.items()}, **self.details}


# ------------------------------------------------------------------------------------------- applying


def _head_geometry(config) -> tuple[int, int, int]:
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    return n_heads, n_kv, head_dim


def head_rows(module: str, head: int, head_dim: int) -> slice:
    """The output rows of ``module`` (q/k/v_proj weight or bias) that belong to ``head``."""
    return slice(head * head_dim, (head + 1) * head_dim)


@dataclass
class FreezeReport:
    """What :func:`apply_freeze` did: frozen tensor names, masked rows per tensor, and parameter counts."""

    frozen: list[str]
    masked: dict[str, list[tuple[int, int]]]  # tensor name -> [(row start, row stop), ...]
    n_frozen_params: int
    n_masked_params: int
    n_params: int
    saved_rows: dict = field(default_factory=dict, repr=False)  # name -> list of (slice, tensor copy)

    def to_dict(self) -> dict:
        return {"frozen": self.frozen, "masked": {k: [list(x) for x in v] for k, v in self.masked.items()},
                "n_frozen_params": self.n_frozen_params, "n_masked_params": self.n_masked_params,
                "n_params": self.n_params}


def apply_freeze(model, plan: FreezePlan) -> FreezeReport:
    """Freeze ``plan`` on ``model`` in place: requires_grad_(False) for whole tensors, gradient hooks for rows.

    Raises ValueError when a planned layer, module or head does not exist in the model.
    """
    import torch

    named = dict(model.named_parameters())
    frozen, masked, saved = [], {}, {}
    layers_seen = set()
    for name, p in named.items():
        layer, leaf, _ = parse_param_name(name)
        if layer is None:
            continue
        layers_seen.add(layer)
        if layer in plan.blocks or layer in plan.modules.get(leaf, ()):
            p.requires_grad_(False)
            frozen.append(name)
    want_layers = set(plan.blocks) | {x for v in plan.modules.values() for x in v} | {
        x[0] for v in plan.heads.values() for x in v}
    missing = sorted(want_layers - layers_seen)
    if missing:
        raise ValueError(f"{plan.strategy}: layer(s) {missing} do not exist (model has {len(layers_seen)} layers)")
    for module, lst in plan.modules.items():
        if lst and not any(parse_param_name(n)[1] == module for n in frozen):
            raise ValueError(f"{plan.strategy}: the model has no {module!r} tensors to freeze")
    if plan.heads:
        n_heads, n_kv, head_dim = _head_geometry(model.config)
        for module, pairs in plan.heads.items():
            limit = n_heads if module == "q_proj" else n_kv
            for layer, head in pairs:
                if not 0 <= head < limit:
                    raise ValueError(f"{plan.strategy}: {module} has {limit} heads, not head {head}")
                targets = [n for n in named if parse_param_name(n)[:2] == (layer, module)]
                if not targets:
                    raise ValueError(f"{plan.strategy}: no {module} tensor in layer {layer}")
                for name in targets:
                    if not named[name].requires_grad:
                        continue  # already frozen whole
                    rows = head_rows(module, head, head_dim)
                    masked.setdefault(name, []).append((rows.start, rows.stop))
        for name, spans in masked.items():
            p = named[name]
            mask = torch.ones(p.shape[0], *([1] * (p.dim() - 1)), dtype=p.dtype, device=p.device)
            for a, b in spans:
                mask[a:b] = 0
            p.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype))
            saved[name] = [(slice(a, b), p.detach()[a:b].clone()) for a, b in spans]
    n_masked = sum((b - a) * max(1, named[n][0].numel()) for n, spans in masked.items() for a, b in spans)
    return FreezeReport(frozen, masked, sum(named[n].numel() for n in frozen), n_masked,
                        sum(p.numel() for p in named.values()), saved)


def restore_masked_rows(model, report: FreezeReport) -> None:
    """Write the saved rows of masked heads back (undoes weight decay; a no-op when nothing moved)."""
    import torch

    if not report.saved_rows:
        return
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, rows in report.saved_rows.items():
            p = named[name] if name in named else named[_unwrapped_name(name, named)]
            for sl, value in rows:
                p[sl].copy_(value.to(p.device))


def _unwrapped_name(name: str, named: Mapping) -> str:
    # a wrapped model (DDP, PEFT) prefixes names; match by suffix
    hits = [n for n in named if n.endswith(name) or name.endswith(n)]
    if len(hits) != 1:
        raise KeyError(f"cannot find parameter {name!r} in the model being trained")
    return hits[0]


def optimizer_param_ids(optimizer) -> tuple[set[int], set[int]]:
    """(ids of the tensors in the optimizer's param_groups, ids of the tensors it holds state for)."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    with_state = {id(p) for p, s in opt.state.items() if s}
    return in_groups, with_state


def check_optimizer_excludes(optimizer, model, frozen: Sequence[str]) -> dict:
    """Raise if the optimizer holds any frozen tensor (in its param_groups or its state); return counts."""
    named = dict(model.named_parameters())
    ids = {id(named[n] if n in named else named[_unwrapped_name(n, named)]) for n in frozen}
    in_groups, with_state = optimizer_param_ids(optimizer)
    bad_groups, bad_state = ids & in_groups, ids & with_state
    if bad_groups or bad_state:
        raise RuntimeError(f"the optimizer holds {len(bad_groups)} frozen tensor(s) in its param_groups and "
                           f"state for {len(bad_state)}")
    return {"optimizer_tensors": len(in_groups), "optimizer_tensors_with_state": len(with_state),
            "frozen_tensors": len(ids)}


def FreezeCallback(holder):  # noqa: N802 (a factory of a TrainerCallback)
    """A TrainerCallback for a freeze: checks that the optimizer holds no frozen tensor (in its param_groups or
    its state) when training begins and ends, and writes masked head rows back after every optimizer step.

    ``holder`` is a :class:`FreezeReport` or a dict whose ``"report"`` is set later (by the model hook that
    applies the freeze); the optimizer counts are stored in ``holder["optimizer"]`` when it is a dict.
    """
    from transformers import TrainerCallback

    def report():
        return holder if isinstance(holder, FreezeReport) else holder.get("report")

    def record(when, counts):
        if isinstance(holder, dict):
            holder.setdefault("optimizer", {})[when] = counts

    class _Freeze(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            if report() is not None and optimizer is not None and model is not None:
                record("begin", check_optimizer_excludes(optimizer, model, report().frozen))

        def on_optimizer_step(self, args, state, control, model=None, **kw):
            if report() is not None and model is not None:
                restore_masked_rows(model, report())

        def on_train_end(self, args, state, control, model=None, optimizer=None, **kw):
            if report() is not None and optimizer is not None and model is not None:
                record("end", check_optimizer_excludes(optimizer, model, report().frozen))

    return _Freeze()


# ------------------------------------------------------------------------------------------- distributed


def check_distributed_support(plan: FreezePlan, distributed_type: str | None = None,
                              env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`FreezingUnsupported` where freezing is not guaranteed: DeepSpeed, FSDP without
    ``use_orig_params``, per-head masking under FSDP. Reads accelerate's state and launch variables by default."""
    env = os.environ if env is None else env
    if distributed_type is None:
        try:
            from accelerate.state import AcceleratorState, PartialState

            state = AcceleratorState() if AcceleratorState._shared_state else PartialState()
            distributed_type = str(getattr(state, "distributed_type", "NO"))
        except Exception:  # no accelerate state: fall back on the launch variables
            distributed_type = "NO"
    kind = distributed_type.rsplit(".", 1)[-1].upper()
    if kind == "DEEPSPEED" or env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise FreezingUnsupported(
            f"{plan.strategy}: layer freezing under DeepSpeed ZeRO is not supported here (ZeRO partitions "
            "gradients and optimizer states itself; frozen tensors were not verified to stay bit-identical). "
            "Launch with configs/accelerate/ddp.yaml or fsdp.yaml (use_orig_params) instead.")
    if kind == "FSDP" or env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        if env.get("FSDP_USE_ORIG_PARAMS", "false").lower() != "true":
            raise FreezingUnsupported(
                f"{plan.strategy}: FSDP flattens each unit's parameters into one tensor that cannot be half "
                "frozen; set fsdp_use_orig_params: true in the accelerate config")
        if plan.heads:
            raise FreezingUnsupported(
                f"{plan.strategy}: per-head gradient masking is not supported under FSDP; use granularity: layer")


# ------------------------------------------------------------------------------------------- verification


def verify_frozen(before_dir: str | Path, after_dir: str | Path, report: dict) -> dict:
    """Stream both checkpoints and check every frozen tensor and masked row is bit-identical (torch.equal).

    ``report`` is :meth:`FreezeReport.to_dict`. Returns counts and the names that differ (empty when all hold).
    """
    import torch

    from .similarity import open_checkpoint

    a, b = open_checkpoint(before_dir), open_checkpoint(after_dir)
    differ, checked, checked_rows = [], 0, 0

    def get(ckpt, name):
        from safetensors import safe_open

        with safe_open(ckpt.tensors[name].file, framework="pt") as f:
            return f.get_tensor(name)

    for name in report["frozen"]:
        checked += 1
        if not torch.equal(get(a, name), get(b, name)):
            differ.append(name)
    for name, spans in report["masked"].items():
        ta, tb = get(a, name), get(b, name)
        for s, e in spans:
            checked_rows += e - s
            if not torch.equal(ta[s:e], tb[s:e]):
                differ.append(f"{name}[{s}:{e}]")
    return {"frozen_tensors_checked": checked, "masked_rows_checked": checked_rows, "differ": differ,
            "bit_identical": not differ}
