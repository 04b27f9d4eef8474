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
        if _bare_key(exc.args[0]):  # a lookup that failed deep down: say what was missing, and where
            where = _file_of(exc)
            msg = (f"{where + ': ' if where else ''}no {msg!r} entry where mmx expected one: it is damaged or was not "
                   "written by this version of mmx; use an intact copy or write it again")
    return click.ClickException(msg)


_PATH_NAMES = ("path", "source", "file", "filename", "run", "store", "gallery", "manifest", "root")


def _bare_key(key) -> bool:
    """A key as a lookup raises it (``KeyError('model')``), not a sentence a message was written as."""
    return isinstance(key, str) and 0 < len(key) <= 64 and not any(c.isspace() for c in key)


def _file_of(exc: BaseException) -> str:
    """The existing file or folder the failing code was reading, from the innermost frame that
    names one (a local such as ``path`` or ``run``, or ``self.path``); '' when none does."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        scopes = [frame.f_locals]
        owner = frame.f_locals.get("self")
        if hasattr(owner, "__dict__"):
            scopes.append(vars(owner))
        for scope in scopes:
            for name in _PATH_NAMES:
                value = scope.get(name)
                if isinstance(value, (str, os.PathLike)) and value and os.path.exists(value):
                    return str(value)
    return ""


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
