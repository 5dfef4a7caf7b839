"""Helper package of the CFT compendium: all logic the notebooks call lives here.

Modules (import what you need; nothing heavy is imported here):
  paths      project root and the home of heavy artifacts ($CFT_HOME)
  io         atomic writes, JSON/JSONL helpers
  config     typed experiment configuration from YAML parameter files
  data       dataset loaders normalised to one chat schema
  sandbox    the offline synthetic multilingual world, its tokenizer and base model
  runs       content-addressed run ids, skip-if-done caching, provenance
  train      Phase 1 / Phase 2 SFT on TRL's SFTTrainer (notebook kernel or accelerate launch)
  report     loss curves and tidy tables
"""

__version__ = "0.1.0"
