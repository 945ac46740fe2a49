"""interp: find and use the subspaces inside language models.

load -> capture -> fit -> intervene -> judge -> Result.
"""

from interp.activations import Activations
from interp.errors import InterpError
from interp.estimators import DiffInMeans, PCADirections
from interp.interventions import Ablate, Add, Patch, Project, Set, SubspacePatch
from interp.loading import load
from interp.model import Model
from interp.registry import BUNDLED, DEFAULT_MODEL
from interp.sites import KINDS, Site
from interp.subspace import Direction, Subspace

__all__ = ["Activations", "InterpError", "load", "Model", "BUNDLED", "DEFAULT_MODEL", "KINDS", "Site", "Subspace",
           "Direction", "DiffInMeans", "PCADirections", "Add", "Ablate", "Project", "Set", "Patch", "SubspacePatch"]
