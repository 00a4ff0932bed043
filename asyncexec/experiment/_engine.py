"""Engine: execo_engine's experiment lifecycle, so that an execo script ports with an
import change.

An experiment is a subclass of :class:`Engine` whose ``run`` does the work; its
script makes one and calls ``start()``, which parses the command line, names the
run, makes (or, with ``-c DIR``, reuses) the result directory, sends the outputs
there if asked, and calls every ``init`` then every ``run`` of the class's
hierarchy, ancestors first.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import cast

from ._outputs import copy_outputs, redirect_outputs

__all__ = ["Engine", "logger"]

#: The engine's logger (execo_engine's ``logger``): what an experiment reports.
#: Making an :class:`Engine` sends it to stdout at INFO, as execo does, unless
#: logging is configured already; ``-l LEVEL`` sets its level.
logger = logging.getLogger("asyncexec.engine")

_FORMAT = "%(asctime)s %(levelname)s: %(message)s"


class _StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is when a record comes (redirection changes it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def _configure_logger() -> None:
    """Show the engine's messages as execo does, if nobody configured logging."""
    package = logging.getLogger("asyncexec")
    if logging.getLogger().handlers or package.handlers:
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    # On the package's logger: the sweeper's warnings show the same way.
    package.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _log_level(text: str) -> int:
    """``-l``'s value: a number or a level's name (any case)."""
    try:
        return int(text)
    except ValueError:
        level = logging.getLevelName(text.upper())
        if isinstance(level, int):
            return level
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level (a number, or DEBUG, INFO, WARNING, ERROR, CRITICAL)"
        ) from None


def _call_on_engine_classes(engine: Engine, name: str) -> None:
    """Call the method ``name`` that each Engine class of ``engine``'s hierarchy defines
    itself (not inherited), once each, ancestors first."""
    for cls in reversed(type(engine).__mro__):
        if issubclass(cls, Engine) and name in vars(cls):
            vars(cls)[name].__get__(engine, type(engine))()


class Engine:
    """An experiment's lifecycle: command line, result directory, outputs, logs.

    Subclass it, add your options to :attr:`args_parser` in ``__init__``, put the
    experiment in ``run`` (and what prepares it in ``init``), then make one and
    call :meth:`start`. As execo_engine's ``Engine``, it has no workflow of its
    own: a ``ParamSweeper`` in :attr:`result_dir` makes a run that can be stopped
    and continued with ``-c DIR``::

        class Congestion(Engine):
            def run(self):
                sweeper = ParamSweeper(self.result_dir + "/sweeper", sweep(PARAMETERS))
                while True:
                    comb = sweeper.get_next()
                    if not comb:
                        break
                    ...  # measure, append to a file in self.result_dir
                    sweeper.done(comb)

        if __name__ == "__main__":
            Congestion().start()

    The command line (execo's options, and yours): ``-l LEVEL`` the
    :data:`logger`'s level (a number or a name); ``-L`` copy stdout and stderr to
    files ``stdout`` and ``stderr`` of the result directory, ``-R`` redirect them
    there instead, ``-M`` (with ``-L`` or ``-R``) one file ``stdout+stderr``;
    ``-c DIR`` use ``DIR`` as the result directory (created if missing), e.g. to
    continue a run that stopped.

    Attributes:
        engine_dir: the absolute directory of the file defining the engine's class
            (None if there is none, as in an interactive session).
        args_parser: an ``argparse.ArgumentParser`` holding execo's options; add
            yours to it before :meth:`start`.
        args: the parsed command line (``argparse.Namespace``): your options and
            arguments, and execo's (``log_level``, ``output_mode``,
            ``merge_outputs``, ``use_dir``). Set by :meth:`start`; None before.
        run_name: the run's name, set by :meth:`setup_run_name`; None before.
        result_dir: the run's directory (absolute), where results, the sweeper's
            state and the redirected outputs go. Set by :meth:`start` (from ``-c``
            or :meth:`setup_result_dir`); None before.
    """

    def __init__(self) -> None:
        module = sys.modules.get(type(self).__module__)
        source = getattr(module, "__file__", None)
        self.engine_dir: str | None = (
            os.path.dirname(os.path.realpath(source)) if source is not None else None
        )
        self.args_parser = argparse.ArgumentParser(
            usage="<program> [options] <arguments>",
            description=f"engine: {type(self).__name__}",
        )
        self.args_parser.add_argument(
            "-l",
            dest="log_level",
            type=_log_level,
            default=None,
            metavar="LEVEL",
            help="the engine logger's level, a number or a name (default: INFO, as execo)",
        )
        self.args_parser.add_argument(
            "-L",
            dest="output_mode",
            action="store_const",
            const="copy",
            default=False,
            help="copy stdout and stderr to files in the result directory",
        )
        self.args_parser.add_argument(
            "-R",
            dest="output_mode",
            action="store_const",
            const="redirect",
            default=False,
            help="redirect stdout and stderr to files in the result directory",
        )
        self.args_parser.add_argument(
            "-M",
            dest="merge_outputs",
            action="store_true",
            default=False,
            help="with -L or -R: stdout and stderr in one file, stdout+stderr",
        )
        self.args_parser.add_argument(
            "-c",
            dest="use_dir",
            default=None,
            metavar="DIR",
            help="use DIR as the result directory (to continue a run in it)",
        )
        # As execo's, None until start() sets them; typed as run() sees them.
        self.args = cast(argparse.Namespace, None)
        self.run_name = cast(str, None)
        self.result_dir = cast(str, None)
        _configure_logger()

    def start(self, engineargs: Sequence[str] | None = None) -> None:
        """Run the experiment: parse the command line, prepare the result directory
        and the outputs, then call every ``init``, then every ``run``.

        Args:
            engineargs: the command line's arguments (default: ``sys.argv[1:]``).

        Raises:
            SystemExit: the command line is wrong (argparse's message and usage
                on stderr, status 2) or asks for ``-h``.
            OSError: the result directory or an output file cannot be made.
            Exception: whatever ``init`` or ``run`` raises, as it was raised.
        """
        argv = sys.argv[1:] if engineargs is None else list(engineargs)
        self.args = self.args_parser.parse_args(argv)
        if self.args.log_level is not None:
            logger.setLevel(self.args.log_level)
        self.setup_run_name()
        if self.args.use_dir:
            self.result_dir = os.path.abspath(self.args.use_dir)
        else:
            self.setup_result_dir()
        os.makedirs(self.result_dir, exist_ok=True)
        if self.args.output_mode:
            if self.args.merge_outputs:
                stdout = stderr = os.path.join(self.result_dir, "stdout+stderr")
            else:
                stdout = os.path.join(self.result_dir, "stdout")
                stderr = os.path.join(self.result_dir, "stderr")
            if self.args.output_mode == "copy":
                copy_outputs(stdout, stderr)
            else:
                redirect_outputs(stdout, stderr)
            where = stdout if stdout == stderr else f"{stdout} and {stderr}"
            how = "copied" if self.args.output_mode == "copy" else "redirected"
            logger.info("stdout and stderr %s to %s", how, where)
        program = sys.argv[0] if sys.argv else type(self).__name__
        logger.info("command line: %s", shlex.join([program, *argv]))
        logger.info("result directory: %s", self.result_dir)
        _call_on_engine_classes(self, "init")
        _call_on_engine_classes(self, "run")

    # -- what an experiment overrides ----------------------------------------------------

    def setup_run_name(self) -> None:
        """Set :attr:`run_name`, before ``init`` and ``run``.

        By default the class's name and the local time:
        ``<ClassName>_<YYYYmmdd>_<HHMMSS>_<+zzzz>``.
        """
        self.run_name = f"{type(self).__name__}_{time.strftime('%Y%m%d_%H%M%S_%z')}"

    def setup_result_dir(self) -> None:
        """Set :attr:`result_dir`, before ``init`` and ``run``; not called with ``-c DIR``.

        By default the directory named :attr:`run_name` in the current directory.
        """
        self.result_dir = os.path.abspath(self.run_name)

    def init(self) -> None:
        """Prepare the experiment (nothing by default).

        Every class of the hierarchy that defines ``init`` has it called once, the
        ancestors' first: a generic engine prepares what its subclasses use.
        Don't call ``super().init()``: it would run twice.
        """

    def run(self) -> None:
        """The experiment (nothing by default).

        Called after every ``init``; as ``init``, once per class that defines it,
        the ancestors' first.
        """
