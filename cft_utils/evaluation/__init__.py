"""Evaluation: task ability and language ability on lm-eval, the AlpacaEval win rate, and the paper's tables.

Modules (import the one you need; this file imports nothing, so a submodule never pulls its siblings):
  runner          lm-eval on the grid's checkpoints: jobs from the profile, per-task caches, tidy results
  tables          Tables 1, 2, A1, A2, B3-B5, the paper's direction checks, the XL-Sum tokenizer check
  items           item-level scores from the caches (the input of the claims' intervals)
  mitigation_scores  TA/LA scores of the mitigation runs and their P1 / unmitigated baselines
  mitigation_tables  Tables 3 and C6, the TA-LA Pareto figure, the strategies' effects
  judge           AlpacaEval-style win rate with a pluggable judge (OpenAI-compatible endpoint, local LM, reference)
  metrics         SQuAD EM/F1 and ROUGE with a Unicode tokenizer; lm-eval ``process_results`` functions
  ifeval_offline  IFEval's sentence splitter data (punkt_tab) without a download
  tasks/          the task YAMLs the project ships, and ``tasks.manager`` (the lm-eval TaskManager for them)
"""
