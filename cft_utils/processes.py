"""Process-level settings shared by the command-line entry points, the executor's workers and notebook kernels."""

from __future__ import annotations

import atexit
import gc

_registered = False


def skip_exit_collection() -> None:
    """Leave the objects alive at interpreter exit out of CPython's final garbage collections.

    With torch, transformers, TRL and lm-eval loaded (~3,800 modules), the interpreter's shutdown walks every
    tracked object in its last collections: ~1.2 s of a process that has only imported TRL's trainer, on the
    2-core machine of bench/RESULTS.md, 0.1 s with this. That second is paid by every ``python -m
    cft_utils.train``, every executor worker when its pool closes, and every notebook kernel when papermill shuts
    it down. The objects are frozen (:func:`gc.freeze`) when the atexit handlers run, so everything else about
    exiting stays as it was: every atexit handler runs (logging's flush, weakref finalizers, temporary folders),
    the standard streams are flushed, and objects whose reference count drops to zero are freed. Only cyclic
    garbage left at exit is not finalised, which no result of this project depends on (files are written
    atomically and closed, :mod:`cft_utils.io`). Idempotent.
    """
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
