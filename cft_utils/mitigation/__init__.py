"""Forgetting mitigations as runs: a registry of strategies, each one file under ``strategies/``.

A strategy declares itself once (:mod:`cft_utils.mitigation.base`): its name (the key under
``mitigation.strategies`` in a parameter file), its parameters (a pydantic model), its table label(s) and its place
in the tables, and either a training hook (extra records, a model hook, callbacks, a PEFT config, a check after
training) or a post-hoc step on the finished Phase 1 and Phase 2 checkpoints. Planning, execution, tables and the
notebooks read the registry; nothing else lists strategy names.

| module | what |
|---|---|
| ``base`` | :class:`~cft_utils.mitigation.base.Strategy` (and its training / post-hoc kinds), ``register`` |
| ``registry`` | the registered strategies (built-ins found in ``strategies/``), profile validation, table order |
| ``strategies/*`` | GR, ER, LF_H1, LF_H2, LoRA, interpolation, reversion: one file each |
| ``replay``, ``freeze``, ``posthoc`` | the mechanics: replay sets, layer freezing, streamed checkpoint merging |
| ``plan`` | every mitigation run of a profile (typed :class:`~cft_utils.runs.RunPlan` with a ``variant``) |
| ``freezing`` | which layers/heads each planned freezing run freezes (notebooks 06 and 08) |
| ``execute`` | one run: train with the strategy's hooks, or write the post-hoc checkpoint |
| ``cli`` | ``python -m cft_utils.mitigation --params sandbox --list`` |

Scoring the mitigation runs and Tables 3/C6 live above this package, in ``cft_utils.evaluation.mitigation_scores``
and ``mitigation_tables`` (they read the registry for labels and order).

Adding a strategy: one file in ``strategies/`` (or anywhere, then ``base.register``) plus its parameters under
``mitigation.strategies`` in the profile; see README, "Extending".
"""
