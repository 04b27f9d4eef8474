"""Feature files that ``mmx cache import`` reads: ``.npy``, ``.npz``, HDF5 and MATLAB ``.mat``.

:func:`open_container` picks the reader by content (MATLAB v7.3 files are HDF5) and returns a
:class:`Container` of named arrays read lazily. MATLAB arrays come back in their MATLAB shape
(``N x D``), strings decoded and cells of strings dereferenced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class FeatureImportError(ValueError):
    """Bad input to ``mmx cache import`` (a ValueError, so the CLI prints one clear line)."""


class Container:
    """Named arrays in one file, read lazily."""

    def __init__(self, path: Path):
        self.path = path

    def names(self) -> list[str]:
        raise NotImplementedError

    def get(self, name: str) -> np.ndarray:
        if name not in self.names():
            raise FeatureImportError(
                f"{self.path}: no variable {name!r}; variables present: {', '.join(self.names()) or '(none)'}"
            )
        return self._read(name)

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Npy(Container):
    kind = ".npy"

    def names(self) -> list[str]:
        return []

    def single(self) -> np.ndarray:
        return np.load(self.path, allow_pickle=False)


class Npz(Container):
    kind = ".npz"

    def __init__(self, path: Path):
        super().__init__(path)
        self._f = np.load(path, allow_pickle=False)

    def names(self) -> list[str]:
        return list(self._f.files)

    def _read(self, name: str) -> np.ndarray:
        return self._f[name]

    def close(self) -> None:
        self._f.close()


class Mat5(Container):
    kind = "MATLAB v5"

    def __init__(self, path: Path):
        super().__init__(path)
        import scipy.io

        try:
            self._vars = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
        except Exception as exc:
            raise FeatureImportError(f"{path}: cannot read as a MATLAB .mat file ({exc})") from exc

    def names(self) -> list[str]:
        return sorted(self._vars)

    def _read(self, name: str) -> np.ndarray:
        return _unwrap_cells(self._vars[name])


class Hdf5(Container):
    """Plain HDF5 and MATLAB v7.3 (HDF5 with ``MATLAB_class`` attributes, column-major)."""

    def __init__(self, path: Path):
        super().__init__(path)
        import h5py

        self._f = h5py.File(path, "r")
        found: list[str] = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("#refs#") and not name.startswith("#"):
                found.append(name)

        self._f.visititems(visit)
        self._names = sorted(found)
        self.matlab = any("MATLAB_class" in self._f[n].attrs for n in self._names)
        self.kind = "MATLAB v7.3" if self.matlab else "HDF5"

    def names(self) -> list[str]:
        return self._names

    def _read(self, name: str) -> np.ndarray:
        return self._read_dataset(self._f[name])

    def _read_dataset(self, ds) -> np.ndarray:
        import h5py

        mclass = ds.attrs.get("MATLAB_class")
        if isinstance(mclass, bytes):
            mclass = mclass.decode()
        data = ds[()]
        if mclass is None:
            return np.asarray(data)
        # MATLAB writes column-major: h5py shows an N x D matrix as D x N.
        data = np.asarray(data).T
        if mclass == "char":  # uint16 code units, one string per row
            rows = np.atleast_2d(data)
            return np.array(["".join(map(chr, r)).rstrip("\0") for r in rows], dtype=object)
        if mclass == "cell":  # object references, one cell each
            flat = [self._read_dataset(self._f[ref]) for ref in data.ravel()]
            return np.array([_scalar(x) for x in flat], dtype=object).reshape(data.shape)
        if data.dtype == h5py.ref_dtype:
            raise FeatureImportError(f"{self.path}: variable {ds.name!r} holds references of MATLAB class {mclass!r}")
        return data

    def close(self) -> None:
        self._f.close()


def _scalar(x: np.ndarray) -> Any:
    x = np.asarray(x, dtype=object).ravel()
    return x[0] if x.size == 1 else "".join(map(str, x))


def _unwrap_cells(a: np.ndarray) -> np.ndarray:
    """scipy reads a MATLAB cell array of strings as an object array of 1-element arrays."""
    if a.dtype == object:
        return np.array([_scalar(x) if isinstance(x, np.ndarray) else x for x in a.ravel()], dtype=object).reshape(a.shape)
    return a


def open_container(path: Path) -> Container:
    if not path.exists():
        raise FeatureImportError(f"{path}: no such file")
    import h5py

    if path.suffix.lower() == ".npy":
        return Npy(path)
    if path.suffix.lower() == ".npz":
        return Npz(path)
    if h5py.is_hdf5(str(path)):  # .h5, .hdf5 and MATLAB v7.3 .mat
        return Hdf5(path)
    if path.suffix.lower() == ".mat":
        return Mat5(path)
    raise FeatureImportError(f"{path}: unknown feature file type; accepted: .npy, .npz, .h5/.hdf5, .mat (v5 or v7.3)")
