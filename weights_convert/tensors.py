"""Lazily read tensors backed by byte ranges of a checkpoint file (numpy only, no torch).

A :class:`Storage` is a typed byte range of the file (a torch storage or a safetensors
buffer); a :class:`LazyTensor` is a strided view into a storage, materialised with
:meth:`LazyTensor.numpy`. Nothing is read until asked, so the converter holds one source
tensor at a time in memory. Every offset, shape and stride coming from the (untrusted) file is
bounds-checked before use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (corrupt, truncated, unsupported, unsafe)."""


class Storage:
    """``count`` elements of ``dtype`` at byte ``offset`` of ``path`` (or in-memory ``data``)."""

    def __init__(self, path: str, offset: int, count: int, dtype: np.dtype,
                 data: bytes | None = None):
        self.path, self.offset, self.count = path, int(offset), int(count)
        self.dtype = np.dtype(dtype)
        self._data = data
        self._array: np.ndarray | None = None
        self.check()

    def check(self) -> None:
        """Bounds-check the byte range against the file (CheckpointError if truncated)."""
        path, offset, count, data = self.path, self.offset, self.count, self._data
        if count < 0 or offset < 0:
            raise CheckpointError(f"{path}: negative storage size or offset")
        if data is None:
            end = self.offset + self.nbytes
            size = os.path.getsize(path)
            if end > size:
                raise CheckpointError(
                    f"{path}: truncated file: a tensor storage needs bytes {self.offset}..{end} "
                    f"but the file has {size} bytes"
                )
        elif len(data) < self.nbytes:
            raise CheckpointError(f"{path}: truncated storage ({len(data)} < {self.nbytes} bytes)")

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def array(self) -> np.ndarray:
        """The storage as a 1-D array (read on first use, kept until :meth:`release`)."""
        if self._array is None:
            if self._data is not None:
                buf = np.frombuffer(self._data, np.uint8, self.nbytes)
            else:
                buf = np.empty(self.nbytes, np.uint8)
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    n = f.readinto(memoryview(buf))
                if n != self.nbytes:
                    raise CheckpointError(f"{self.path}: truncated file (short read)")
            self._array = buf.view(self.dtype)
        return self._array

    def release(self) -> None:
        self._array = None


@dataclass
class LazyTensor:
    """A strided view (element units) into a :class:`Storage`; ``numpy()`` copies it out."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.stride = tuple(int(s) for s in self.stride)
        if len(self.shape) != len(self.stride):
            raise CheckpointError("tensor shape and stride have different lengths")
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise CheckpointError("negative tensor size, stride or offset")
        if self.size:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride,
                                                                   strict=True))
            if last >= self.storage.count:
                raise CheckpointError(
                    f"tensor of shape {self.shape} reads element {last} of a storage of "
                    f"{self.storage.count} elements (corrupt or truncated checkpoint)"
                )

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        """A fresh C-contiguous numpy copy of the tensor."""
        if not self.size:
            return np.zeros(self.shape, self.dtype)
        base = self.storage.array()
        item = self.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride),
            writeable=False)
        return np.array(view, copy=True, order="C")


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major element strides of ``shape``."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


# torch storage class names / dtype names -> numpy dtypes
TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}
TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "complex64": np.complex64, "complex128": np.complex128,
}
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
