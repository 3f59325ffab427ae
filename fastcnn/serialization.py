"""save / load of state dicts as ``.npz`` files; nothing is ever pickled or unpickled.

>>> import os, tempfile, numpy as np, fastcnn
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> fastcnn.save({"0.weight": np.ones((2, 3), np.float32)}, path)
>>> fastcnn.load(path)["0.weight"].shape
(2, 3)
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import numpy as np

__all__ = ["load", "save"]


def _to_numpy(key: str, value) -> np.ndarray:
    """A NumPy array for ``value``; CuPy arrays are copied to the host with ``.get()``."""
    if not isinstance(value, np.ndarray) and type(value).__module__.startswith("cupy"):
        value = value.get()
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise ValueError(
            f"state_dict[{key!r}] is an object array; only numeric arrays can be saved "
            f"(object arrays would need pickle)"
        )
    return array


def save(state_dict: Mapping[str, object], path: str | os.PathLike) -> None:
    """Write ``{name: array}`` to ``path`` as an uncompressed ``.npz`` file.

    The file is written at exactly ``path`` (no ``.npz`` is appended). Values may be
    NumPy arrays, CuPy arrays (copied to the host) or anything ``np.asarray`` takes;
    object arrays are refused, so the file never needs pickle to read.

    Examples
    --------
    >>> import io; buffer = io.BytesIO()
    >>> save({"bias": np.zeros(3)}, buffer)
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    arrays = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {key!r}")
        arrays[key] = _to_numpy(key, value)
    # The same layout np.savez writes (one "<key>.npy" member per array), built here so
    # that keys such as "file" cannot clash with np.savez's own keyword arguments.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save` into ``{name: NumPy array}``, in saved order.

    Uses ``np.load(..., allow_pickle=False)``, so a file holding object arrays raises
    ``ValueError`` instead of running pickle.

    Examples
    --------
    >>> import io; buffer = io.BytesIO()
    >>> save({"bias": np.zeros(3)}, buffer); _ = buffer.seek(0)
    >>> load(buffer)
    {'bias': array([0., 0., 0.])}
    """
    with np.load(path, allow_pickle=False) as archive:
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path!r} is a single .npy array, not a saved state dict")
        return {key: archive[key] for key in archive.files}
