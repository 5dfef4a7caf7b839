"""The sandbox: a seeded, offline, multilingual world in which the paper's experiment runs on a CPU.

Modules (import the one you need; this file imports nothing, so a submodule never pulls its siblings):
  world   languages' lexicons, concepts and facts, task families, the World and its datasets (bottom layer)
  tiny    tiny tokenizer and causal-LM builders (also used by the tests for real-family stand-ins)
  build   the world's data dump, tokenizer and pre-trained base model, cached under $CFT_HOME/sandbox/
  bench   the sandbox analogues of the paper's benchmarks, generated from the world
  probe   a quick exact-match forgetting probe on held-out test items
"""
