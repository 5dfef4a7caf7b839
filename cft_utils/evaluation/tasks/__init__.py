"""lm-eval task YAMLs the project ships, and :mod:`.manager` (the TaskManager that knows them and points them at
local files).

Folders (package data): ``paper/`` (``cft_xquad_<lang>``, ``cft_xlsum_<language>`` and their groups), ``sandbox/``
(``sb_*``: the sandbox analogues of the paper's benchmarks, data from :mod:`cft_utils.sandbox.bench`) and
``alpacaeval/`` (``cft_alpacaeval``: generation for the AlpacaEval win rate). Scoring functions named by the YAMLs
(``!function``) live in :mod:`cft_utils.evaluation.metrics`.
"""
