"""Task-gradient matrices shared by the method tests (defined in the package, where
``python -m mtlkernels.validate`` uses them too)."""
from mtlkernels.cases import adversarial_cases, conflicting_J, random_J

__all__ = ["adversarial_cases", "conflicting_J", "random_J"]
