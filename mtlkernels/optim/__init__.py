"""Drop-in multi-task optimizers: wrap any ``torch.optim.Optimizer``.

    opt = CAGrad(torch.optim.Adam(model.parameters(), lr=1e-3), c=0.5)
    opt.zero_grad(set_to_none=True)
    opt.backward(losses)                # or opt.backward(losses, features=z)
    opt.step()

The Gramian wrappers (PCGrad, CAGrad, NashMTL, IMTL, MGDA, MGDAUB, UPGrad, DualProj, GradVac,
FairGrad, ConFIG, AlignedMTL) take the K task gradients
(every step, or every n-th with ``update_every=n``); the loss-weighting wrappers (FAMO, UW, DWA,
RLW, GradNorm; :mod:`.loss_weighting`) take one backward of Σₖ wₖ·Lₖ.
"""
from .aligned_mtl import AlignedMTL
from .base import MultiTaskOptimizer, NonFiniteError, ParameterRoles
from .cagrad import CAGrad
from .config import ConFIG
from .dualproj import DualProj
from .dwa import DWA
from .fairgrad import FairGrad
from .famo import FAMO
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl import IMTL
from .loss_weighting import LossWeighting
from .mgda import MGDA
from .mgda_ub import MGDAUB
from .nash_mtl import NashMTL
from .pcgrad import PCGrad
from .rlw import RLW
from .upgrad import UPGrad
from .uw import UW

__all__ = [
    "AlignedMTL", "CAGrad", "ConFIG", "DualProj", "DWA", "FairGrad", "FAMO", "GradNorm", "GradVac", "IMTL",
    "LossWeighting", "MGDA", "MGDAUB", "MultiTaskOptimizer", "NashMTL", "NonFiniteError", "ParameterRoles",
    "PCGrad", "RLW", "UPGrad", "UW",
]
