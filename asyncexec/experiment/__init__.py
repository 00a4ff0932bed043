"""Experiments: a function over a parameter grid, with a results store and resume;
and execo_engine's ``Engine``, with the names execo_engine exports beside it, so
that ``from execo_engine import ...`` becomes ``from asyncexec.experiment import ...``.
"""

from ..sweep import HashableDict as HashableDict
from ..sweep import ParamSweeper as ParamSweeper
from ..sweep import geom as geom
from ..sweep import igeom as igeom
from ..sweep import slugify as slugify
from ..sweep import sweep as sweep
from ..sweep import sweep_stats as sweep_stats
from ._engine import Engine as Engine
from ._engine import logger as logger
from ._outputs import copy_outputs as copy_outputs
from ._outputs import redirect_outputs as redirect_outputs
from ._progress import Progress as Progress
from ._runner import Experiment as Experiment
from ._runner import RunControl as RunControl
from ._runner import RunSummary as RunSummary
from ._store import ResultsStore as ResultsStore
from ._store import RunSpec as RunSpec
from ._store import StoreError as StoreError

__all__ = [
    "Engine",
    "Experiment",
    "HashableDict",
    "ParamSweeper",
    "Progress",
    "ResultsStore",
    "RunControl",
    "RunSpec",
    "RunSummary",
    "StoreError",
    "copy_outputs",
    "geom",
    "igeom",
    "logger",
    "redirect_outputs",
    "slugify",
    "sweep",
    "sweep_stats",
]
