"""Turning exceptions into clear CLI messages: one line each, naming the file and what to do.

Exit codes: 0 success; 1 an error the message explains (bad input, a refused file, every item
failed); 2 a usage error (click's); 3 an internal error, whose traceback is written to a file.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
import traceback

import click

INTERNAL_EXIT = 3

_OS_ADVICE = {
    errno.EACCES: "check its permissions, or choose another folder (--out, --cache)",
    errno.EPERM: "check its permissions, or choose another folder (--out, --cache)",
    errno.EROFS: "the file system is read-only; choose a writable folder (--out, --cache)",
    errno.ENAMETOOLONG: "the name is too long for the file system; use a shorter --name, id or path",
    errno.EISDIR: "a folder stands where a file is expected; give a file",
    errno.ENOTDIR: "a file stands where a folder is expected; give a folder",
    errno.EEXIST: "something already exists there; remove it or choose another path",
    errno.ELOOP: "too many symbolic links; point mmx at the real path",
}


def user_error(exc: BaseException) -> click.ClickException:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])
    return click.ClickException(msg)


def no_space(exc: OSError) -> click.ClickException:
    """A full disk, wherever it struck: what was being written, and that a rerun resumes.

    Every writer in mmx writes to a temporary and renames it, appends whole lines, or marks a
    shard complete only after its data, so what is on disk stays consistent and the same
    command continues where this one stopped once there is room.
    """
    where = f" while writing {exc.filename}" if exc.filename else ""
    return click.ClickException(f"no space left on the device{where}; free some space, then run the same "
                                "command again: it resumes where this one stopped")


def os_error(exc: OSError) -> click.ClickException:
    """A refused file operation: which file, why, and what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    advice = _OS_ADVICE.get(exc.errno)
    return click.ClickException(f"{where}{exc.strerror or exc}" + (f"; {advice}" if advice else ""))


class InternalError(click.ClickException):
    exit_code = INTERNAL_EXIT


def internal_error(exc: BaseException) -> click.ClickException:
    """An exception mmx did not expect: one line, the full traceback saved to a file for the report."""
    path = os.path.join(tempfile.gettempdir(), f"mmx-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(exc)))
        where = f"the full traceback is in {path}"
    except OSError:
        where = "run again with MMX_DEBUG=1 for the traceback"
    first = (str(exc).splitlines() or [""])[0][:300]
    return InternalError(f"internal error ({type(exc).__name__}: {first}); {where}; please report it")
