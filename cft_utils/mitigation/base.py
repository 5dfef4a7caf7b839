"""What a mitigation strategy declares, and :func:`register`.

A strategy is a class with:

* ``name`` — its key under ``mitigation.strategies`` in a parameter file (``GR``, ``LF_H2``, ...);
* ``Params`` — its parameters, a pydantic model (unknown keys are refused; defaults are the paper's);
* its table label(s): ``label_prefix`` gives one run per value (``GR`` with ``percents: [5, 10]`` -> ``GR_5``,
  ``GR_10``: see :meth:`Strategy.numbered`); without it the label is the name;
* ``order`` — where its rows sit in Tables 3/C6 (after ``P1`` and the unmitigated ``none``);
* :meth:`Strategy.variants` — the (label, resolved parameters) of each run it adds to a cell. The resolved
  parameters are part of the run id and are all the run reads when it executes;
* its kind: a :class:`TrainingStrategy` returns :class:`Hooks` for Phase 2 training (extra records, a model hook,
  trainer callbacks, a PEFT config) and may check the result after training (:meth:`TrainingStrategy.finish`);
  a :class:`PosthocStrategy` writes a checkpoint from the finished Phase 1 and Phase 2 models
  (:meth:`PosthocStrategy.apply`), without training.

Minimal example (a post-hoc strategy that keeps the Phase 2 model as it is)::

    from cft_utils.mitigation.base import Parameters, PosthocStrategy, register

    @register
    class Identity(PosthocStrategy):
        name = "identity"

        class Params(Parameters):
            note: str = "nothing changes"

        def apply(self, run, cfg, p1_dir, p2_dir, out_dir):
            shutil.copytree(p2_dir, out_dir, dirs_exist_ok=True)
            return {"note": run.variant.params["note"]}

and in the profile ``mitigation: {strategies: {identity: {note: hello}}}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..config import ExperimentConfig, TrainingSpec
from ..runs import RunPlan


class Parameters(BaseModel):
    """Base of a strategy's parameters: strict (unknown keys are an error), assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Cell:
    """Where a strategy adds runs: one model on one cell of ``mitigation.cells``.

    ``parent`` is the cell's Phase 1 run, ``baseline`` its unmitigated Phase 2 run."""

    cfg: ExperimentConfig
    model: str
    parent: RunPlan
    baseline: RunPlan
    table: str | None


@dataclass
class Hooks:
    """What a training strategy changes in Phase 2 (the arguments of :func:`cft_utils.train.execute`).

    ``info`` is written to the run's ``mitigation.json`` and to ``summary.json`` under ``"mitigation"``;
    ``state`` is shared between the hooks while training (e.g. what a model hook froze, for a callback)."""

    extra_records: list[dict] | None = None
    model_hook: Callable | None = None
    callbacks: list = field(default_factory=list)
    peft_config: Any = None
    info: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)


class Strategy:
    """A forgetting mitigation (see the module docstring). Subclass :class:`TrainingStrategy` or
    :class:`PosthocStrategy`."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Parameters
    kind: ClassVar[str]
    order: ClassVar[int] = 1000
    label_prefix: ClassVar[str | None] = None

    def check(self, params: BaseModel, cfg: ExperimentConfig) -> None:
        """Cross-check the parameters against the rest of the profile; raise ``ValueError("<key>: <why>")``."""

    def variants(self, params: BaseModel, cell: Cell) -> list[tuple[str, dict]]:
        """(label, resolved parameters) of each run this strategy adds to ``cell`` (default: one, labelled by
        the name, with the parameters as given)."""
        return [(self.name, params.model_dump())]

    def numbered(self, values: Sequence[float], key: str, **common) -> list[tuple[str, dict]]:
        """One variant per value, labelled ``<label_prefix>_<value>`` (``GR_5``), with ``{key: value, **common}``."""
        return [(f"{self.label_prefix}_{v:g}", {key: v, **common}) for v in values]

    def sort_value(self, label: str) -> float | None:
        """Where ``label`` sits among this strategy's labels (its number), or None when it is not one of them."""
        if self.label_prefix:
            m = re.fullmatch(re.escape(self.label_prefix) + r"_([-+0-9.e]+)", label)
            if m:
                try:
                    return float(m.group(1))
                except ValueError:
                    return None
        return 0.0 if label == self.name else None

    def summary(self, info: dict) -> dict:
        """Columns of the mitigation checks table (notebook 08) from a run's ``mitigation.json``."""
        return {}


class TrainingStrategy(Strategy):
    """A strategy that changes Phase 2 training (:func:`cft_utils.train.execute` runs it)."""

    kind = "training"
    #: whether :meth:`prepare` adds records to Phase 2 (the replay strategies; notebook 07 shows those)
    adds_records: ClassVar[bool] = False

    def hparams(self, params: dict, hparams: TrainingSpec) -> TrainingSpec:
        """The run's training hyper-parameters (default: the cell's Phase 2 ones)."""
        return hparams

    def prepare(self, run: RunPlan, cfg: ExperimentConfig, progress: bool = True) -> Hooks:
        """The hooks for ``run`` (reads ``run.variant.params``; runs on every process of a launch)."""
        return Hooks()

    def finish(self, run: RunPlan, cfg: ExperimentConfig, hooks: Hooks, main_process: bool) -> None:
        """After training, on every process: check the result and add to ``hooks.info`` (default: nothing)."""


class PosthocStrategy(Strategy):
    """A strategy applied to the finished Phase 1 and Phase 2 checkpoints (no training)."""

    kind = "posthoc"

    def apply(self, run: RunPlan, cfg: ExperimentConfig, p1_dir: Path, p2_dir: Path, out_dir: Path) -> dict:
        """Write ``run``'s model (safetensors, config and tokenizer) to ``out_dir``; return what was done."""
        raise NotImplementedError


KINDS = ("training", "posthoc")
_REGISTERED: dict[str, Strategy] = {}


def register(strategy, replace: bool = False):
    """Register a strategy (an instance, or a class: usable as a class decorator); returns what it was given.

    Registering another strategy under a taken name raises unless ``replace``."""
    inst = strategy() if isinstance(strategy, type) else strategy
    if not isinstance(inst, Strategy) or getattr(inst, "kind", None) not in KINDS:
        raise TypeError(f"{strategy!r} is not a TrainingStrategy or PosthocStrategy")
    name = getattr(inst, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{type(inst).__name__} declares no name")
    if not (isinstance(inst.Params, type) and issubclass(inst.Params, BaseModel)):
        raise TypeError(f"{name}: Params must be a pydantic model")
    old = _REGISTERED.get(name)
    if old is not None and not replace and type(old).__qualname__ != type(inst).__qualname__:
        raise ValueError(f"a strategy named {name!r} is already registered ({type(old).__qualname__})")
    _REGISTERED[name] = inst
    return strategy


def unregister(name: str) -> None:
    """Remove a registered strategy (tests register toy strategies and remove them again)."""
    _REGISTERED.pop(name, None)


def registered() -> dict[str, Strategy]:
    """The strategies registered so far, by name (see :func:`cft_utils.mitigation.registry.strategies`)."""
    return dict(_REGISTERED)
