"""The built-in mitigation strategies, one module each; every module registers its strategy when imported.

:func:`cft_utils.mitigation.registry.strategies` imports every module of this folder, so a new file here is a new
strategy (see :mod:`cft_utils.mitigation.base` for what a strategy declares).
"""
