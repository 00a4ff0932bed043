"""Experiments: a function over a parameter grid, with a results store and resume."""

from ._progress import Progress as Progress
from ._runner import Experiment as Experiment
from ._runner import RunSummary as RunSummary
from ._store import ResultsStore as ResultsStore
from ._store import RunSpec as RunSpec
from ._store import StoreError as StoreError

__all__ = ["Experiment", "Progress", "ResultsStore", "RunSpec", "RunSummary", "StoreError"]
