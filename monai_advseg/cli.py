"""What every command-line entry point of the package shares: bad input answered with ``error:`` lines, not a traceback.

A command's ``main(argv) -> int`` is wrapped with :func:`entry_point`. When it raises an
:class:`~monai_advseg.data.InputError` (or one of the exception types the command declares as input errors), the
wrapper prints one line per problem on stderr, ``error: <file or value>: <what is wrong>``, and returns 1. Any other
exception is a bug, not bad input, and keeps its traceback. ``--debug`` anywhere on the command line, or
``MONAI_ADVSEG_DEBUG=1`` in the environment, shows the traceback of input errors too::

    @entry_point
    def main(argv=None) -> int: ...

    @entry_point(input_errors=(ValueError, OSError))  # a command that only reads and checks files
    def main(argv=None) -> int: ...
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from monai_advseg.data import checks
from monai_advseg.data.checks import INPUT_PROBLEM_RECORD, InputError, _describe_error

__all__ = ["DEBUG_ENV", "DEBUG_HELP", "entry_point", "print_input_error"]

#: Environment variable that makes every command show the traceback of an input error (``1``, ``true`` or ``yes``).
DEBUG_ENV = "MONAI_ADVSEG_DEBUG"
#: Help text of ``--debug`` for the commands' parsers.
DEBUG_HELP = f"show the Python traceback of an input error (or set {DEBUG_ENV}=1)"

Main = Callable[[Sequence[str] | None], int]


def print_input_error(error: BaseException, file: TextIO | None = None) -> None:
    """Print an input error as ``error: <file or value>: <what is wrong>`` lines, one per problem.

    Args:
        error: an :class:`~monai_advseg.data.InputError` (each of its problems gets a line) or any exception whose
            message names the file or value (one line; an ``OSError`` of Python's own is rewritten as
            ``<file>: <reason>``).
        file: the stream; default ``sys.stderr``.
    """
    file = sys.stderr if file is None else file
    lines = error.lines if isinstance(error, InputError) else [_describe_error(error)]
    for line in lines:
        print(f"error: {line}", file=file)


def _not_an_input_problem(record: logging.LogRecord) -> bool:
    return not getattr(record, INPUT_PROBLEM_RECORD, False)


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def entry_point(
    main: Main | None = None, *, input_errors: tuple[type[BaseException], ...] = (InputError,)
) -> Main | Callable[[Main], Main]:
    """Wrap a command's ``main(argv) -> int`` so that bad input ends it with ``error:`` lines and exit status 1.

    Args:
        main: the command (when used as ``@entry_point`` without arguments).
        input_errors: the exception types that mean bad input for this command (:class:`~monai_advseg.data.InputError`
            always does). The default, only ``InputError``, suits commands that also run models (a ``ValueError`` from
            inside a network is a bug and keeps its traceback); a command that only reads and checks its inputs may
            declare wider types, e.g. ``(ValueError, OSError)``.

    Returns:
        the wrapped command (or, without ``main``, a decorator), taking ``argv`` (default ``sys.argv[1:]``). The
        wrapper only looks for ``--debug`` in ``argv``; the command's parser declares it (``action="store_true"``,
        ``help=DEBUG_HELP``), so that it is accepted and listed in ``--help``.
    """

    caught = (InputError, *input_errors)

    def decorate(function: Main) -> Main:
        @functools.wraps(function)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = _debug_requested(argv)
            # the checks log each problem for bundle runs; here the wrapper prints them, so they are not shown twice
            checks_logger = checks.logger
            if not debug:
                checks_logger.addFilter(_not_an_input_problem)
            try:
                return function(argv)
            except caught as error:
                if debug:
                    raise
                print_input_error(error)
                return 1
            finally:
                checks_logger.removeFilter(_not_an_input_problem)

        return wrapper

    return decorate(main) if main is not None else decorate
