"""Instruction data: the common record schema (``schema``), local file readers (``readers``), the loaders of
Alpaca, MultiAlpaca, OpenOrca, mOpenOrca and the sandbox sets (``loaders``), the sandbox's mOpenOrca build
(``sandbox_mopenorca``) and the selective translation that builds mOpenOrca (``translation``).

Import the submodule you need (``from cft_utils.data.loaders import load_records``); this file imports nothing.
"""
