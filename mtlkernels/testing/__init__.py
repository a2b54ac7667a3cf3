"""Public helpers for validating mtlkernels: the task-gradient families it is checked on and the
peer libraries it is checked against.

:mod:`mtlkernels.testing.cases`
    random, conflicting and adversarial task-gradient matrices J [K, N];
:mod:`mtlkernels.testing.peers`
    drivers that run torchjd's aggregators and LibMTL's weightings on a given J.

``python -m mtlkernels.validate`` is built on these; they are importable for your own checks too
(e.g. against gradients saved from your model). The library itself never uses them.
"""
from . import cases, peers

__all__ = ["cases", "peers"]
