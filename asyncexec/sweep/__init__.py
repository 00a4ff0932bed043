"""Parameter sweeps with execo_engine's API: sweep(), ParamSweeper and helpers."""

from ._state import SweeperError as SweeperError
from ._sweep import HashableDict as HashableDict
from ._sweep import geom as geom
from ._sweep import igeom as igeom
from ._sweep import slugify as slugify
from ._sweep import sweep as sweep
from ._sweep import sweep_stats as sweep_stats
from ._sweeper import ParamSweeper as ParamSweeper

__all__ = [
    "HashableDict",
    "ParamSweeper",
    "SweeperError",
    "geom",
    "igeom",
    "slugify",
    "sweep",
    "sweep_stats",
]
