"""The registered strategies: the built-ins of ``strategies/`` plus any registered elsewhere, the validation of a
profile's ``mitigation.strategies`` against them, and the order of their rows in the tables.

``config.py`` sits below the strategies (they need data, models and checkpoints), so it keeps
``mitigation.strategies`` as a raw mapping (name -> parameters); :func:`validate` checks it here, when runs are
planned and before any compute, and raises :class:`cft_utils.config.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import importlib
import pkgutil

from pydantic import BaseModel, ValidationError

from ..config import ConfigError, ExperimentConfig
from ..runs import RunPlan
from .base import Strategy, registered

_BUILTIN = f"{__package__}.strategies"
_loaded = False


def strategies() -> dict[str, Strategy]:
    """Every registered strategy by name (the built-in modules of ``strategies/`` are imported on first use)."""
    global _loaded
    if not _loaded:
        pkg = importlib.import_module(_BUILTIN)
        for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            importlib.import_module(f"{_BUILTIN}.{m.name}")
        _loaded = True
    return registered()


def get(name: str) -> Strategy:
    """The strategy registered as ``name`` (KeyError lists the registered names)."""
    known = strategies()
    if name not in known:
        raise KeyError(f"no mitigation strategy named {name!r}; registered: {sorted(known)}")
    return known[name]


def strategy_of(run: RunPlan) -> Strategy:
    """The strategy of a mitigation run (``run.variant.strategy``)."""
    if run.variant is None:
        raise ValueError(f"{run.name} is not a mitigation run (it has no variant)")
    return get(run.variant.strategy)


def validate(cfg: ExperimentConfig) -> list[tuple[Strategy, BaseModel]]:
    """The profile's strategies with their validated parameters, in the profile's order.

    Unknown names, bad parameters and failed cross-checks are collected and raised together as one
    :class:`ConfigError` whose lines name the parameter file and the key."""
    mit = cfg.mitigation
    if mit is None:
        return []
    where, known = cfg.source_file or "<config>", strategies()
    out, errors = [], []
    for name, raw in mit.strategies.items():
        key = f"mitigation.strategies.{name}"
        if name not in known:
            errors.append(f"{where}: {key}: unknown strategy; registered: {sorted(known)}")
            continue
        s = known[name]
        if raw is not None and not isinstance(raw, dict):
            errors.append(f"{where}: {key}: expected a mapping of parameters, got {type(raw).__name__}")
            continue
        try:
            params = s.Params.model_validate(raw or {})
        except ValidationError as e:
            errors += [f"{where}: {key}.{'.'.join(str(x) for x in err['loc']) or '<all>'}: {err['msg']}"
                       for err in e.errors()]
            continue
        try:
            s.check(params, cfg)
        except ValueError as e:
            errors.append(f"{where}: {e}")
            continue
        out.append((s, params))
    if errors:
        raise ConfigError("invalid parameter file\n  " + "\n  ".join(errors))
    return out


def table_order(label: str) -> tuple:
    """Sort key of a strategy label in the tables: ``P1``, ``none``, then by the strategies' ``order`` and each
    strategy's own values (``GR_5`` before ``GR_10``); labels of no registered strategy last, alphabetically."""
    if label == "P1":
        return (0, 0.0, label)
    if label == "none":
        return (1, 0.0, label)
    for s in sorted(strategies().values(), key=lambda s: (s.order, s.name)):
        v = s.sort_value(label)
        if v is not None:
            return (2, s.order, v, label)
    return (3, 0, 0.0, label)
