"""``python -m bnn_cli ARGS`` is ``bnn ARGS``.

A sweep starts each trial as ``python -m bnn_cli --child-of SWEEP_PID train ...`` (and
``bnn sweep --jobs N`` its N sweep processes as ``... --child-of PID sweep ...``): the
child ties itself to its parent before it runs. The kernel sends it SIGTERM when the
sweep process dies, however it dies (Linux ``PR_SET_PDEATHSIG``), so the trial of a
killed sweep saves a checkpoint and ends ``interrupted`` instead of training on with no
one to read it; and it leaves the sweep's process group, so a Ctrl-C at the terminal
reaches the sweep alone, which passes it on once. (Done here, in the new interpreter,
rather than between fork and exec, where a threaded parent must not run Python code.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

CHILD_OF = "--child-of"


def _tie_to(parent: int) -> bool:
    """Follow the sweep ``parent``; False if it is gone already."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(Exception):  # (not Linux: the sweep's own handlers remain)
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == parent  # the sweep died before the line above: do not start


def main(argv: list[str]) -> int:
    if argv[:1] == [CHILD_OF]:
        if not _tie_to(int(argv[1])):
            return 143
        argv = argv[2:]
    from bnn_cli.cli import main as bnn  # (after the tie: nothing runs first)

    return bnn(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
