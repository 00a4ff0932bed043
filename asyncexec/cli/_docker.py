"""``asyncexec docker``: can an image run our tasks; remove the containers a driver left."""

from __future__ import annotations

import argparse
import sys


def docker(options: argparse.Namespace) -> int:
    """``asyncexec docker check IMAGE`` and ``asyncexec docker prune``."""
    import asyncio

    from .. import LaunchError
    from ..launchers.docker import check_image, prune_containers

    try:
        if options.docker_command == "check":
            described = asyncio.run(
                check_image(options.image, python=options.python, url=options.url)
            )
            print(f"{options.image} can run asyncexec tasks: {described}")
            return 0
        removed = asyncio.run(
            prune_containers(options.executor, every=options.every, url=options.url)
        )
    except LaunchError as exc:
        print(f"asyncexec: {exc}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} container(s)" + "".join(f"\n  {name}" for name in removed))
    return 0
