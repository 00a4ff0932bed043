"""``python -m asyncexec.worker``: the one worker every backend runs.

``serve --fd N`` is the long-lived mode of pools; ``run --input F --output G``
the one-shot mode of remote backends; ``version`` prints what a driver must
match. The implementation lives in ``asyncexec._worker``.
"""

import sys

from ._worker import execute as execute
from ._worker import main as main
from ._worker import run_batch as run_batch
from ._worker import version_mismatch as version_mismatch

__all__ = ["execute", "main", "run_batch", "version_mismatch"]

if __name__ == "__main__":
    sys.exit(main())
