"""Task-gradient matrices shared by the tests: the public families of
:mod:`mtlkernels.testing.cases`, which ``python -m mtlkernels.validate`` uses too."""
from mtlkernels.testing.cases import adversarial_cases, conflicting_J, random_J

__all__ = ["adversarial_cases", "conflicting_J", "random_J"]
