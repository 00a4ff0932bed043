"""Shells: how launchers reach a machine.

:class:`LocalShell` (:mod:`.local`) runs commands on this machine;
:class:`SSHShell` (:mod:`.ssh`) on another one, over a small pool of SSH
connections (asyncssh).
"""

from .local import LocalShell as LocalShell
from .ssh import DEFAULT_CHANNELS_PER_CONNECTION as DEFAULT_CHANNELS_PER_CONNECTION
from .ssh import SSHShell as SSHShell
from .ssh import SSHShellStats as SSHShellStats

__all__ = ["LocalShell", "SSHShell", "SSHShellStats"]
