"""Layer freezing in Phase 2 (LF_H1, LF_H2), by layer or by attention head: the mechanics the two freezing
strategies (``strategies/lf_h1.py``, ``strategies/lf_h2.py``) share through :class:`FreezingStrategy`.

* **The budget** — ``k`` layers (:func:`n_frozen_layers`: ``mitigation.freezing.n_layers``, or ``fraction`` of
  the model's layers rounded half up), resolved once when runs are planned; it travels in each run's parameters.
* **LF_H1** — a seeded random set of ``k`` decoder layers is frozen (the whole block, or only its q/k/v
  projections: the strategy's ``scope``).
* **LF_H2** — the ``k`` layers whose q_proj (and separately k_proj, v_proj) changed most from the base model to
  the Phase 1 model are frozen, per projection (:func:`select_lf_h2`, the one selector; streamed from
  safetensors by :mod:`cft_utils.checkpoints`). For the sandbox Instruct model the "base" is the sandbox base model it was trained from; for the
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

from ..checkpoints import (
    FUSED_PROJECTIONS,
    fused_row_slices,
    open_checkpoint,
    parameter_difference,
    parse_param_name,
    rank_heads,
    rank_layers,
)
from ..config import ExperimentConfig
from ..io import read_json
from ..plan import model_spec, phase1_model_dir
from ..runs import RunPlan
from .base import Cell, Hooks, TrainingStrategy

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


def head_geometry(config) -> tuple[int, int, int]:
    """(attention heads, key/value heads, head dimension) of a model config (a transformers config or a dict)."""
    c = config if isinstance(config, Mapping) else config.to_dict()
    n_heads = int(c["num_attention_heads"])
    n_kv = int(c.get("num_key_value_heads") or n_heads)
    head_dim = int(c.get("head_dim") or c["hidden_size"] // n_heads)
    return n_heads, n_kv, head_dim


def select_lf_h2(base_dir: str | Path, phase1_dir: str | Path, k: int, modules: Sequence[str] = QKV,
                 measure: str = "absolute", granularity: str = "layer") -> FreezePlan:
    """LF_H2, the one selector: per module, the ``k`` layers whose weights changed most from base to Phase 1
    (most changed first; ``granularity="layer"``), or the ``k x heads-per-layer`` most-changed (layer, head) pairs
    (``"head"``: the same budget in heads). Streams both checkpoints; ``details["ranking"]`` holds the table."""
    if granularity not in ("layer", "head"):
        raise ValueError(f"granularity must be layer or head, got {granularity!r}")
    diff = parameter_difference(base_dir, phase1_dir, row_modules=tuple(modules))
    num_layers = diff.config_a.get("num_hidden_layers")
    details = {"k": k, "num_layers": num_layers, "base": str(base_dir), "measure": measure}
    if granularity == "layer":
        ranking, table = rank_layers(diff, modules, top_k=k, measure=measure)
        return FreezePlan("LF_H2", modules=ranking, details={**details, "ranking": table.to_dict("records")})
    n_heads, n_kv, _ = head_geometry(diff.config_a)
    heads, tables = {}, []
    for m in modules:
        ranking, table = rank_heads(diff, [m], top_k=k * (n_heads if m == "q_proj" else n_kv), measure=measure)
        heads[m] = ranking[m]
        tables.append(table)
    import pandas as pd

    return FreezePlan("LF_H2-head", heads=heads, details={
        **details, "heads_per_module": {m: len(v) for m, v in heads.items()},
        "ranking": pd.concat(tables, ignore_index=True).to_dict("records")})


def model_layer_count(path: str | Path) -> int:
    """``num_hidden_layers`` of a local model folder's ``config.json``."""
    return int(read_json(Path(path) / "config.json")["num_hidden_layers"])


def known_layer_count(cfg: ExperimentConfig, model_name: str, fetch: bool = False) -> int | None:
    """The decoder layer count of a profile's model, from what is known without compute: the sandbox model spec,
    a local folder's config, the hub cache (or, with ``fetch``, the hub's config.json); None when unknown."""
    m = model_spec(cfg, model_name)
    if m.base == "sandbox":
        return cfg.sandbox.model.num_layers
    local = Path(m.base).expanduser()
    if (local / "config.json").exists():
        return model_layer_count(local)
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        hit = try_to_load_from_cache(m.base, "config.json", revision=m.revision)
        if not isinstance(hit, str) and fetch:
            hit = hf_hub_download(m.base, "config.json", revision=m.revision)
        return int(read_json(Path(hit))["num_hidden_layers"]) if isinstance(hit, str) else None
    except Exception:  # offline and not cached: the budget is checked when the model is loaded
        return None


def planned_budget(cfg: ExperimentConfig, model_name: str) -> int:
    """The number of layers ``mitigation.freezing`` freezes in ``model_name`` (resolved once, when planning):
    ``n_layers`` as given (checked against the model when its size is known), or ``fraction`` of its layers."""
    f = cfg.mitigation.freezing
    n = known_layer_count(cfg, model_name, fetch=f.fraction is not None)
    if n is None:
        if f.n_layers is None:
            raise ValueError(f"mitigation.freezing.fraction: the layer count of {model_name} is unknown offline "
                             "(download the model or give n_layers)")
        return f.n_layers
    try:
        return n_frozen_layers(n, f.n_layers, f.fraction)
    except ValueError as e:
        raise ValueError(f"mitigation.freezing: {e} ({model_name})") from None


# ------------------------------------------------------------------------------------------- applying


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

    Raises ValueError when a planned layer, module or head does not exist in the model. In a model with fused
    projections (``qkv_proj``, ``gate_up_proj``), a planned ``q_proj`` (``k_proj``, ...) freeze or head is the
    part's rows of the fused tensor, frozen by gradient masking like a head (the other parts keep training).
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
    config = model.config.to_dict()
    fused = {}  # (layer, part) -> [(tensor name, rows of the part)]
    for name in named:
        layer, leaf, _ = parse_param_name(name)
        for part, sl in (fused_row_slices(leaf, config) if layer is not None else {}).items():
            fused.setdefault((layer, part), []).append((name, sl))
    for module, lst in plan.modules.items():
        for layer in lst if not any(parse_param_name(n)[1] == module for n in named) else ():
            for name, sl in fused.get((layer, module), []):
                if named[name].requires_grad:
                    masked.setdefault(name, []).append((sl.start, sl.stop))
        if lst and not any(parse_param_name(n)[1] == module for n in frozen) and not any(
                (layer, module) in fused for layer in lst):
            fused_leaves = sorted({parse_param_name(n)[1] for n in named} & set(FUSED_PROJECTIONS))
            raise ValueError(f"{plan.strategy}: the model has no {module!r} tensors to freeze"
                             + (f" (its fused projections: {fused_leaves})" if fused_leaves else ""))
    if plan.heads:
        n_heads, n_kv, head_dim = head_geometry(model.config)
        for module, pairs in plan.heads.items():
            limit = n_heads if module == "q_proj" else n_kv
            for layer, head in pairs:
                if not 0 <= head < limit:
                    raise ValueError(f"{plan.strategy}: {module} has {limit} heads, not head {head}")
                targets = [(n, 0) for n in named if parse_param_name(n)[:2] == (layer, module)]
                targets += [(n, sl.start) for n, sl in fused.get((layer, module), [])]  # the part's rows
                if not targets:
                    raise ValueError(f"{plan.strategy}: no {module} tensor in layer {layer}")
                for name, offset in targets:
                    if not named[name].requires_grad:
                        continue  # already frozen whole
                    rows = head_rows(module, head, head_dim)
                    masked.setdefault(name, []).append((offset + rows.start, offset + rows.stop))
    if masked:
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


# ------------------------------------------------------------------------------------------- the strategies' base


class FreezingStrategy(TrainingStrategy):
    """Base of the layer-freezing strategies: the frozen budget (``mitigation.freezing``, shared so that every
    freezing strategy freezes the same number of layers) is resolved when planning and carried in the run's
    parameters as ``n_frozen_layers``; a subclass chooses *which* layers (:meth:`freeze_plan`).

    Training: a model hook applies the plan, a callback checks the optimizer and restores masked rows, and after
    training both checkpoints are streamed to check every frozen tensor is bit-identical."""

    def budget(self, cell: Cell) -> dict:
        """The shared budget, resolved for the cell's model: ``n_frozen_layers`` and ``modules``."""
        return {"n_frozen_layers": planned_budget(cell.cfg, cell.model),
                "modules": list(cell.cfg.mitigation.freezing.modules)}

    def freeze_plan(self, run: RunPlan, cfg: ExperimentConfig) -> FreezePlan:
        """What ``run`` freezes, from its parameters (``n_frozen_layers``, ...) and its Phase 1 model."""
        raise NotImplementedError

    def prepare(self, run: RunPlan, cfg: ExperimentConfig, progress: bool = True) -> Hooks:
        plan = self.freeze_plan(run, cfg)
        check_distributed_support(plan)
        hooks = Hooks(info={"plan": plan.to_dict()})

        def hook(model):
            hooks.state["report"] = apply_freeze(model, plan)

        hooks.model_hook = hook
        hooks.callbacks = [FreezeCallback(hooks.state)]
        return hooks

    def finish(self, run: RunPlan, cfg: ExperimentConfig, hooks: Hooks, main_process: bool) -> None:
        if "report" not in hooks.state:
            return
        rep = hooks.state["report"].to_dict()
        hooks.info["freeze"] = {k: v for k, v in rep.items() if k not in ("frozen", "masked")}
        hooks.info["frozen_tensors"] = rep["frozen"]
        hooks.info["masked_rows"] = rep["masked"]
        hooks.info["optimizer"] = hooks.state.get("optimizer", {})
        if main_process:
            check = verify_frozen(phase1_model_dir(cfg, run.parent), run.model_dir, rep)
            hooks.info["verification"] = check
            if not check["bit_identical"]:
                raise RuntimeError(f"{run.name}: frozen weights changed in Phase 2: {check['differ'][:5]}")

    def summary(self, info: dict) -> dict:
        if "verification" not in info:
            return {}
        return {"frozen_tensors": len(info["frozen_tensors"]), "frozen_params": info["freeze"]["n_frozen_params"],
                "masked_params": info["freeze"]["n_masked_params"],
                "bit_identical": info["verification"]["bit_identical"],
                "optimizer_tensors": info["optimizer"].get("end", {}).get("optimizer_tensors")}
