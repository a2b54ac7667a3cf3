"""Deprecated alias of :mod:`mtlkernels.testing.cases`; import from there. Kept so that existing
``from mtlkernels.cases import ...`` lines keep working."""
from .testing.cases import adversarial_cases, conflicting_J, random_J

__all__ = ["adversarial_cases", "conflicting_J", "random_J"]
