"""interp: find and use the subspaces inside language models.

load -> capture -> fit -> intervene -> judge -> Result.
"""

from interp.core.activations import Activations
from interp.core.interventions import Ablate, Add, Patch, Project, Set, SubspacePatch
from interp.core.loading import load
from interp.core.model import Model
from interp.core.sites import FAMILIES, KINDS, Family, Site
from interp.core.subspace import Direction, Subspace
from interp.core.verify import BackendCheck, verify, verifying
from interp.data.registry import BUNDLED, DEFAULT_MODEL
from interp.directions.estimators import DiffInMeans, PCADirections
from interp.errors import InterpError

__all__ = ["Activations", "InterpError", "load", "Model", "BUNDLED", "DEFAULT_MODEL", "KINDS", "Site", "Subspace",
           "Direction", "DiffInMeans", "PCADirections", "Add", "Ablate", "Project", "Set", "Patch", "SubspacePatch",
           "FAMILIES", "Family", "verify", "verifying", "BackendCheck"]
