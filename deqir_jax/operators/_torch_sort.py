"""Reproduce the tie order of ``torch.sort(descending=True)`` on the CPU.

The official ``Deblurring``/``Deblurring2D`` operators sort the products of the 1-D singular
values with ``Tensor.sort(descending=True)`` and, because of a layout quirk (see
:mod:`deqir_jax.operators.deblur`), the resulting permutation decides which singular value
multiplies which coefficient. The products contain many exact ties (``s_i s_j = s_j s_i``), and
PyTorch's CPU kernel sorts with ``std::sort`` (libstdc++ introsort, not stable), so the order of
tied entries is a deterministic function of the input. This module emulates libstdc++'s
``std::sort`` (median-of-three introsort, threshold 16, heap-sort fallback at depth
``2 floor(log2 n)``, final insertion sort) with the comparator ``a > b`` so the faithful operators
reproduce the official measurements exactly. It runs once per operator construction
(about a second for 256x256).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["torch_sort_descending_indices"]

_THRESHOLD = 16


def torch_sort_descending_indices(keys: np.ndarray) -> np.ndarray:
    """Indices ``perm`` such that ``keys[perm]`` is sorted descending, ties as ``torch.sort``.

    Args:
      keys: 1-D array without NaNs (compared as given; pass float32 to mimic float32 tensors).

    Returns:
      int64 array, the permutation ``torch.sort(torch.from_numpy(keys), descending=True)[1]``.
    """
    v = [float(t) for t in np.asarray(keys).reshape(-1)]
    ix = list(range(len(v)))
    n = len(v)

    def swap(i: int, j: int) -> None:
        v[i], v[j] = v[j], v[i]
        ix[i], ix[j] = ix[j], ix[i]

    def median_to_first(res: int, a: int, b: int, c: int) -> None:
        if v[a] > v[b]:
            if v[b] > v[c]:
                swap(res, b)
            elif v[a] > v[c]:
                swap(res, c)
            else:
                swap(res, a)
        elif v[a] > v[c]:
            swap(res, a)
        elif v[b] > v[c]:
            swap(res, c)
        else:
            swap(res, b)

    def partition(first: int, last: int, pivot: int) -> int:
        pv = v[pivot]
        while True:
            while v[first] > pv:
                first += 1
            last -= 1
            while pv > v[last]:
                last -= 1
            if not first < last:
                return first
            swap(first, last)
            first += 1

    def adjust_heap(first: int, hole: int, length: int, val: float, vix: int) -> None:
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if v[first + child] > v[first + child - 1]:
                child -= 1
            v[first + hole], ix[first + hole] = v[first + child], ix[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            v[first + hole], ix[first + hole] = v[first + child - 1], ix[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and v[first + parent] > val:
            v[first + hole], ix[first + hole] = v[first + parent], ix[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        v[first + hole], ix[first + hole] = val, vix

    def heap_sort(first: int, last: int) -> None:
        length = last - first
        if length >= 2:
            parent = (length - 2) // 2
            while True:
                adjust_heap(first, parent, length, v[first + parent], ix[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:
            last -= 1
            val, vix = v[last], ix[last]
            v[last], ix[last] = v[first], ix[first]
            adjust_heap(first, 0, last - first, val, vix)

    def linear_insert(i: int) -> None:
        val, vix = v[i], ix[i]
        j = i - 1
        while val > v[j]:
            v[i], ix[i] = v[j], ix[j]
            i = j
            j -= 1
        v[i], ix[i] = val, vix

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            if v[i] > v[first]:
                val, vix = v[i], ix[i]
                v[first + 1 : i + 1] = v[first:i]
                ix[first + 1 : i + 1] = ix[first:i]
                v[first], ix[first] = val, vix
            else:
                linear_insert(i)

    # Iterative introsort loop (libstdc++ recurses on the right part, loops on the left part).
    stack = [(0, n, 2 * int(math.floor(math.log2(n))) if n > 1 else 0)]
    while stack:
        first, last, depth = stack.pop()
        while last - first > _THRESHOLD:
            if depth == 0:
                heap_sort(first, last)
                break
            depth -= 1
            mid = first + (last - first) // 2
            median_to_first(first, first + 1, mid, last - 1)
            cut = partition(first + 1, last, first)
            stack.append((cut, last, depth))
            last = cut
    if n > _THRESHOLD:
        insertion_sort(0, _THRESHOLD)
        for i in range(_THRESHOLD, n):
            linear_insert(i)
    elif n > 1:
        insertion_sort(0, n)
    return np.asarray(ix, dtype=np.int64)
