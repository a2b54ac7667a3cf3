"""Benchmarks a user can run: ``python -m mtlkernels.bench --suite cpu-small``.

Every case times mtlkernels, the plain-torch way and the installed peers (torchjd, LibMTL) on the
same J in the same run, beside the memory floor measured in that run (see :mod:`.timing` and
:mod:`.suites`); results go to a table, JSON, CSV and PNG plots (:mod:`.report`).
"""
