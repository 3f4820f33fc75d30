"""Shared plumbing of the command-line entry points: one clear error line, exit status 2, no traceback.

absl's own handling of a bad flag prints ``FATAL Flags parsing error: ...`` plus a help hint and exits 1;
every hlrs_tf command instead reports it like any other bad input: ``<prog>: error: <cause>`` on stderr,
exit status 2.
"""

from __future__ import annotations

import sys

from absl import flags


def fail(prog: str, message: str) -> None:
    """Prints ``<prog>: error: <message>`` (one line) and exits with status 2."""
    message = " ".join(str(message).split())  # one line, whatever the exception text looked like
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def flags_parser(prog: str, flag_values=flags.FLAGS):
    """An ``absl.app.run(..., flags_parser=...)`` parser that turns flag errors into :func:`fail`."""

    def parse(argv):
        try:
            return flag_values(argv)
        except flags.Error as e:
            fail(prog, f"{e} (see --helpfull)")

    return parse
