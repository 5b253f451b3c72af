"""Training in tiny subspaces (Li et al., *Low dimensional landscape hypothesis is true: DNNs can be trained in tiny subspaces*): DLDR, P-SGD and P-BFGS.

Sample the parameter trajectory of ordinary training with :class:`TrajectorySampler`,
extract a d-dimensional basis with :func:`dldr`, and continue training inside it with
:class:`PSGD` or :class:`PBFGS`; ``--method subspace`` does all three from the CLI.
"""

from smallfoot.subspace.basis import Basis, dldr
from smallfoot.subspace.optim import PBFGS, PSGD, armijo_line_search, backtracking_line_search
from smallfoot.subspace.trajectory import (
    TrajectorySampler,
    TrajectoryStore,
    add_to_params,
    flat_grad,
    flatten,
    parameter_layout,
    set_params,
)

__all__ = [
    "PBFGS",
    "PSGD",
    "Basis",
    "TrajectorySampler",
    "TrajectoryStore",
    "add_to_params",
    "armijo_line_search",
    "backtracking_line_search",
    "dldr",
    "flat_grad",
    "flatten",
    "parameter_layout",
    "set_params",
]
