"""Read ``torch.save`` files without torch and without running code from the file.

Supported: the zip format (PyTorch >= 1.6, the default) and the legacy pickle format
(``_use_new_zipfile_serialization=False`` / PyTorch < 1.6). The even older tar format is
reported as unsupported.

Safety: the pickle is read with :class:`RestrictedUnpickler`, whose ``find_class`` resolves
only the globals needed to rebuild tensors, storages and ``OrderedDict`` (listed in
``ALLOWED_GLOBALS``) to local, side-effect-free stand-ins; any other global (``os.system``,
``builtins.eval``, ``argparse.Namespace``, ...) raises :class:`UnsafeCheckpointError` naming it,
before anything is called. Tensors come back as :class:`~weights_convert.tensors.LazyTensor`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from .tensors import (
    TORCH_DTYPES,
    TORCH_STORAGE_DTYPES,
    CheckpointError,
    LazyTensor,
    Storage,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the allow-list (it may contain code)."""


class _StorageType:
    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)


class _DType:
    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)


class _Marker:
    """Stand-in for a class only used as a type tag (torch.Tensor, nn.Parameter)."""

    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, Storage):
        raise CheckpointError("tensor rebuilt from something that is not a storage")
    return LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(storage, Storage) or not isinstance(dtype, _DType):
        raise CheckpointError("malformed _rebuild_tensor_v3 call")
    nbytes = storage.nbytes
    if nbytes % dtype.dtype.itemsize:
        raise CheckpointError("untyped storage size is not a multiple of the dtype size")
    typed = Storage(storage.path, storage.offset, nbytes // dtype.dtype.itemsize, dtype.dtype,
                    data=storage._data)
    return _rebuild_tensor(typed, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_tensor, _rebuild_parameter):
        raise CheckpointError("malformed _rebuild_from_type_v2 call")
    return func(*args)


def _torch_size(*args):
    return tuple(*args) if args else ()


def _np_dtype(name, *args):
    dt = np.dtype(name)
    if dt.hasobject:
        raise UnsafeCheckpointError("refusing numpy object dtype in checkpoint")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError("refusing numpy scalar that is not plain numeric data")
    return np.frombuffer(data, dtype, 1)[0]


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Size"): _torch_size,
        ("torch", "Tensor"): _Marker("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
        ("numpy", "dtype"): _np_dtype,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
    }
    for name, dt in TORCH_STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(name, dt)
        table[("torch.storage", name)] = _StorageType(name, dt)
    for name, dt in TORCH_DTYPES.items():
        table[("torch", name)] = _DType(name, dt)
    return table


ALLOWED_GLOBALS = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only :data:`ALLOWED_GLOBALS`; storages come from ``storage_loader``."""

    def __init__(self, file, storage_loader: Callable[[tuple], Storage] | None = None):
        super().__init__(file, encoding="utf-8")
        self._storage_loader = storage_loader

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load global '{module}.{name}': only tensor/storage/OrderedDict "
                "globals are allowed (the file may contain code; if you trust it, re-save a "
                "plain state_dict with torch.save(model.state_dict(), path))"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_loader is None or not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"unexpected persistent id in pickle: {pid!r:.80}")
        if pid[0] != "storage":
            raise CheckpointError(f"unsupported persistent id type {pid[0]!r:.40}")
        return self._storage_loader(pid)


def _safe_load(data_or_file, storage_loader=None) -> Any:
    f = io.BytesIO(data_or_file) if isinstance(data_or_file, bytes) else data_or_file
    return RestrictedUnpickler(f, storage_loader).load()


def _zip_data_offset(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: corrupt zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load_zip(path: str) -> Any:
    """Unpickle a zip-format ``torch.save`` file; tensors are lazy."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{path}: corrupt or truncated zip checkpoint ({e})") from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: zip file without a single <root>/data.pkl "
                                  "(not a torch.save checkpoint)")
        root = pkls[0][: -len("data.pkl")]
        order = "little"
        if root + "byteorder" in names:
            order = zf.read(root + "byteorder").decode(errors="replace").strip()
        if order not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder {order!r}")
        cache: dict[str, Storage] = {}

        def load_storage(pid: tuple) -> Storage:
            if len(pid) < 5 or not isinstance(pid[1], _StorageType):
                raise CheckpointError(f"{path}: malformed storage reference")
            _, stype, key, _location, _numel = pid[:5]
            key = str(key)
            if key in cache:
                return cache[key]
            entry = f"{root}data/{key}"
            try:
                info = zf.getinfo(entry)
            except KeyError:
                raise CheckpointError(f"{path}: missing storage {entry} (truncated?)") from None
            dtype = stype.dtype if order == "little" else stype.dtype.newbyteorder(">")
            if info.file_size % dtype.itemsize:
                raise CheckpointError(f"{path}: storage {entry} has a partial element")
            count = info.file_size // dtype.itemsize
            if info.compress_type == zipfile.ZIP_STORED:
                st = Storage(path, _zip_data_offset(path, zf, info), count, dtype)
            else:
                st = Storage(path, 0, count, dtype, data=zf.read(entry))
            cache[key] = st
            return st

        with zf.open(pkls[0]) as f:
            return _safe_load(f.read(), load_storage)


def load_legacy(path: str) -> Any:
    """Unpickle a legacy (non-zip) ``torch.save`` file; tensors are lazy."""
    if tarfile.is_tarfile(path):
        raise CheckpointError(
            f"{path}: legacy tar-format torch checkpoint (PyTorch < 0.4) is not supported; "
            "re-save it with a recent torch")
    records: dict[str, tuple[np.dtype, int]] = {}
    placeholders: dict[str, Storage] = {}
    with open(path, "rb") as f:
        magic = _safe_load(f)
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        protocol = _safe_load(f)
        if protocol != 1001:
            raise CheckpointError(f"{path}: unsupported legacy protocol {protocol!r}")
        sys_info = _safe_load(f)
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)

        def load_storage(pid: tuple) -> Storage:
            if len(pid) < 5 or not isinstance(pid[1], _StorageType):
                raise CheckpointError(f"{path}: malformed storage reference")
            _, stype, key, _location, numel = pid[:5]
            if len(pid) > 5 and pid[5] is not None:
                raise CheckpointError(f"{path}: legacy storage views are not supported")
            key = str(key)
            dtype = stype.dtype if little else stype.dtype.newbyteorder(">")
            records[key] = (dtype, int(numel))
            if key not in placeholders:  # offset filled in once the data section is read
                st = Storage.__new__(Storage)
                st.path, st.offset, st.count, st.dtype = path, 0, int(numel), dtype
                st._data, st._array = None, None
                placeholders[key] = st
            return placeholders[key]

        obj = _safe_load(f, load_storage)
        keys = _safe_load(f)
        if not isinstance(keys, list):
            raise CheckpointError(f"{path}: malformed legacy checkpoint (storage key list)")
        size = os.path.getsize(path)
        for key in keys:
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointError(f"{path}: truncated file (storage {key} missing)")
            key = str(key)
            count = struct.unpack("<q" if little else ">q", header)[0]
            if key not in records:
                raise CheckpointError(f"{path}: data for unreferenced storage {key}")
            dtype = records[key][0]
            start = f.tell()
            if count < 0 or start + count * dtype.itemsize > size:
                raise CheckpointError(f"{path}: truncated file (storage {key} incomplete)")
            if key in placeholders:
                st = placeholders[key]
                if count < st.count:
                    raise CheckpointError(f"{path}: storage {key} is shorter than declared")
                st.offset, st.count = start, count
                st.check()
            f.seek(start + count * dtype.itemsize)
    missing = sorted(set(records) - {str(k) for k in keys})
    if missing:
        raise CheckpointError(f"{path}: truncated file (storages {missing[:5]} missing)")
    return obj
