"""``python -m asyncexec.worker``: the one worker every pool runs.

``serve --fd N`` (local pools) or ``serve --stdio`` (SSH hosts, containers)
is the long-lived mode; ``version`` prints what a driver must match. The
implementation lives in ``asyncexec._worker``; cluster jobs run the
standard-library-only runner in ``asyncexec._runtime`` instead.
"""

import sys

from ._worker import execute as execute
from ._worker import main as main
from ._worker import version_mismatch as version_mismatch

__all__ = ["execute", "main", "version_mismatch"]

if __name__ == "__main__":
    sys.exit(main())
