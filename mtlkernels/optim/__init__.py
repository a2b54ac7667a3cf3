"""Drop-in multi-task optimizers: wrap any ``torch.optim.Optimizer``.

    opt = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-3), c=0.5)
    opt.zero_grad(set_to_none=True)
    opt.backward(losses)                # or opt.backward(losses, features=z)
    opt.step()
"""
from .aligned_mtl import AlignedMTL
from .base import MultiTaskOptimizer, NonFiniteError, ParameterRoles
from .cagrad import CAGrad
from .config import ConFIG
from .fairgrad import FairGrad
from .imtl import IMTL
from .mgda import MGDA
from .mgda_ub import MGDAUB
from .nash_mtl import NashMTL
from .pcgrad import PCGrad

__all__ = ["AlignedMTL", "CAGrad", "ConFIG", "FairGrad", "IMTL", "MGDA", "MGDAUB", "MultiTaskOptimizer", "NashMTL", "NonFiniteError", "ParameterRoles", "PCGrad"]
