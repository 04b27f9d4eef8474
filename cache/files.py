"""Reading files that a person or another process may have planted, and writing only inside a folder.

Every read opens the file once, refuses anything but a regular file (a FIFO, a device such as
``/dev/zero``, a socket: refused at once, never read), and stops at a size cap before the cost
is paid: :func:`read_bytes`, :func:`read_json`, :func:`read_yaml` (safe loader that refuses
aliases and explicit tags), :func:`load_npz` (no pickles, a decompressed-size cap checked from
the zip directory and each array's header before anything is inflated). Errors are
:class:`UnsafeFileError` (a ``ValueError``) whose one line names the file.
:func:`inside` creates folders under a root and refuses symlinked components, so a planted link
cannot send a write elsewhere; :func:`refuse_links` checks the same without creating anything. Caps and why: docs/guarantees.md.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

MiB = 1 << 20
MAX_TEXT = 16 * MiB  # config.yaml, normalizer.json, metrics.json, splits.json: kilobytes when written by mmx
MAX_JSONL = 256 * MiB  # metrics.jsonl: one short line per epoch
MAX_NPZ = 16 << 30  # decompressed bytes of one .npz gallery (16 GiB: 16M rows x 256 float32)
NPZ_SLACK = 64 * MiB  # decompressed bytes any .npz may reach whatever its compression
NPZ_RATIO = 32  # beyond the slack, decompressed bytes per byte of file (mmx writes npz uncompressed: 1)


class UnsafeFileError(ValueError):
    """A file that is not what its place says (not a regular file, too large, a bomb, malformed)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file") -> int:
    """A read-only descriptor of ``path`` (symlinks followed) once it is known to be a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(f"{path}: {_kind(mode)}, not a regular file; mmx reads a {what} only from a "
                                  "regular file: replace it with the real file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike, what: str = "file", cap: int | None = None) -> int:
    """``path``'s size once it is a regular file of at most ``cap`` bytes (for readers that open it themselves)."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if cap is not None and size > cap:
        raise UnsafeFileError(f"{path}: {size} bytes, over the {_human(cap)} a {what} may have; is this the right file?")
    return size


def read_bytes(path: str | os.PathLike, cap: int = MAX_TEXT, what: str = "file") -> bytes:
    """The bytes of regular file ``path``, refused past ``cap`` (also when it grows while read)."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            raise UnsafeFileError(f"{path}: {size} bytes, over the {_human(cap)} a {what} may have; is this the right file?")
        parts, got = [], 0
        while True:
            chunk = os.read(fd, min(cap + 1 - got, 1 << 24))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            if got > cap:
                raise UnsafeFileError(f"{path}: grew past the {_human(cap)} a {what} may have while being read")
        return b"".join(parts)
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, cap: int = MAX_TEXT, what: str = "file") -> str:
    try:
        return read_bytes(path, cap, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); is this the right file?") from None


def parse_json(text: str | bytes, source: str) -> Any:
    """``json.loads`` whose every failure (syntax, nesting too deep) is one line naming ``source``."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnsafeFileError(f"{source}: not valid JSON ({exc})") from None
    except (RecursionError, UnicodeDecodeError) as exc:
        raise UnsafeFileError(f"{source}: not valid JSON ({type(exc).__name__}: nested too deeply or not UTF-8)") from None


def read_json(path: str | os.PathLike, cap: int = MAX_TEXT, what: str = "JSON file") -> Any:
    return parse_json(read_text(path, cap, what), str(path))


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """The safe loader without aliases (``*a``: a few hundred bytes of them expand without
        bound) and without explicit tags (``!!python/...``, ``!!binary``: nothing mmx writes)."""

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} (YAML aliases are not accepted "
                                                  "in mmx files; write the value out)", event.start_mark)
            tag = getattr(event, "tag", None)
            if tag not in (None, "!"):
                raise yaml.composer.ComposerError(None, None, f"tag {tag} (explicit YAML tags are not accepted in "
                                                  "mmx files)", event.start_mark)
            return super().compose_node(parent, index)

    return StrictLoader


def parse_yaml(text: str, source: str) -> Any:
    """YAML with the strict loader; every failure is one line naming ``source``."""
    import yaml

    loader = None
    try:
        loader = _strict_loader()(text)  # its reader already refuses control characters
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UnsafeFileError(f"{source}: not valid YAML{at} ({problem})") from None
    except RecursionError:
        raise UnsafeFileError(f"{source}: not valid YAML (nested too deeply)") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | os.PathLike, cap: int = MAX_TEXT, what: str = "YAML file") -> Any:
    return parse_yaml(read_text(path, cap, what), str(path))


def load_npz(path: str | os.PathLike, cap: int = MAX_NPZ, what: str = "gallery") -> dict:
    """``{name: array}`` of an ``.npz`` (no pickles), refused before inflating when its arrays
    would take more than ``max(NPZ_SLACK, NPZ_RATIO x file size)`` bytes or more than ``cap``."""
    import numpy as np

    fd = open_regular(path, what)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fd).st_size
        limit = min(cap, max(NPZ_SLACK, NPZ_RATIO * size))
        try:
            with zipfile.ZipFile(fh) as zf:
                total = 0
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        raise UnsafeFileError(f"{path}: member {info.filename!r} is not a NumPy array; not a {what} mmx wrote")
                    total += info.file_size
                    if total > limit:
                        raise UnsafeFileError(
                            f"{path}: its arrays would take over {_human(limit)} once decompressed from a {_human(size)} "
                            f"file (a {what} may take {NPZ_RATIO}x its file size, at most {_human(cap)}); refused unread")
                    with zf.open(info) as member:
                        need = _npy_bytes(member)
                    if need > info.file_size:
                        raise UnsafeFileError(f"{path}: array {info.filename!r} declares {need} bytes but holds {info.file_size}")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except UnsafeFileError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()
            raise UnsafeFileError(f"{path}: not a valid .npz {what} ({text[0] if text else type(exc).__name__})") from None


def _npy_bytes(f) -> int:
    """Bytes of the array whose ``.npy`` header opens ``f``; object (pickled) arrays refused."""
    from numpy.lib import format as npf

    version = npf.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npf.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = npf.read_array_header_2_0(f)
    else:
        shape, _, dtype = npf._read_array_header(f, version)
    if dtype.hasobject:
        raise ValueError("an object array (pickled data), which mmx never loads")
    return int(math.prod(shape)) * dtype.itemsize if shape else dtype.itemsize


def check_finite(name: str, array, source: str, chunk: int = 1 << 16) -> None:
    """Refuse ``array`` (NumPy or torch) when any value is NaN or infinite; checked ``chunk`` rows at a time."""
    import numpy as np

    if hasattr(array, "detach"):  # a torch tensor
        import torch

        if array.is_floating_point() and not bool(torch.isfinite(array).all()):
            bad = int((~torch.isfinite(array)).sum())
            raise UnsafeFileError(f"{source}: {name} holds {bad} non-finite value(s) (NaN or inf); "
                                  "it cannot give meaningful embeddings: retrain or restore the file")
        return
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.complexfloating):
        return
    if a.size == 0:
        return
    rows = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        if not np.isfinite(block).all():
            raise UnsafeFileError(f"{source}: {name} holds non-finite values (NaN or inf) from row {start + int(np.argmax(~np.isfinite(block).all(1)))}; "
                                  "retrain or rebuild the file")


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """The folder ``root/parts...``, created as needed; refused if any part below ``root`` is a
    symlink (or not a folder), so a planted link cannot send what is written there elsewhere."""
    path = Path(root)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise UnsafeFileError(f"{path}: a symbolic link (to {os.readlink(path)}); mmx writes only inside "
                                  f"{root} and will not follow it: remove the link")
        if not path.exists():
            path.mkdir()
        elif not path.is_dir():
            raise UnsafeFileError(f"{path}: not a folder; move it away so mmx can write there")
    return path


def refuse_links(root: str | os.PathLike, path: str | os.PathLike, option: str = "") -> Path:
    """``path`` once no part of it below ``root`` (``path`` itself included) is a symbolic link;
    else :class:`UnsafeFileError` naming the link, its target and the folder mmx writes in.
    Nothing is created. ``option`` names the option that chose ``root`` (for the message)."""
    root, path = Path(root), Path(path)
    rel = path.relative_to(root)
    at = root
    for part in rel.parts:
        at = at / part
        if at.is_symlink():
            chosen = f" (chosen by {option})" if option else ""
            raise UnsafeFileError(f"{at}: a symbolic link (to {os.readlink(at)}); mmx writes only inside {root}{chosen} "
                                  "and will not follow it: remove the link, or point mmx at the real folder")
    return path


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in blocks (a file of gigabytes costs no memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


__all__ = ["UnsafeFileError", "open_regular", "check_regular", "read_bytes", "read_text", "read_json", "parse_json",
           "read_yaml", "parse_yaml", "load_npz", "check_finite", "inside", "refuse_links", "sha256_of"]
