"""PSNR and SSIM in JAX (pinned definitions: see :mod:`deqir_jax.metrics`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ITU-R BT.601 luma as used by common SR evaluation (MATLAB ``rgb2ycbcr``, BasicSR
# ``rgb2ycbcr(..., y_only=True)``): Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255
# for R, G, B in [0, 1]; Y is then in [16/255, 235/255].
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _float_dtype(*arrays):
    return jnp.result_type(*(a.dtype for a in arrays), jnp.float32)


def _prepare(name: str, x, y, crop: int):
    """Check shapes, add a batch axis to HWC, crop the border. Returns (x, y, was_hwc)."""
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"{name}: x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expected HWC or NHWC arrays, got shape {x.shape}")
    dtype = _float_dtype(x, y)
    x, y = x.astype(dtype), y.astype(dtype)
    was_hwc = x.ndim == 3
    if was_hwc:
        x, y = x[None], y[None]
    crop = int(crop)
    if crop < 0:
        raise ValueError(f"{name}: crop must be >= 0, got {crop}")
    if crop:
        h, w = x.shape[1:3]
        if 2 * crop >= h or 2 * crop >= w:
            raise ValueError(f"{name}: crop={crop} removes the whole {h}x{w} image")
        x = x[:, crop:-crop, crop:-crop, :]
        y = y[:, crop:-crop, crop:-crop, :]
    return x, y, was_hwc


def rgb_to_y(x):
    """BT.601 luma of RGB images in ``[-1, 1]``, returned on the ``[0, 1]`` scale.

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` with ``R, G, B = (x + 1) / 2``.

    Args:
      x: ``(..., 3)`` array in ``[-1, 1]``.

    Returns:
      ``(..., 1)`` array in ``[16/255, 235/255]``.
    """
    x = jnp.asarray(x)
    if x.shape[-1] != 3:
        raise ValueError(f"rgb_to_y: expected 3 channels (RGB), got shape {x.shape}")
    w = jnp.asarray(BT601_Y_WEIGHTS, dtype=_float_dtype(x))
    unit = (x + 1.0) / 2.0
    return ((BT601_Y_OFFSET + unit @ w) / 255.0)[..., None]


def psnr(x, y, data_range: float = 2.0, *, crop: int = 0, y_channel: bool = False):
    """Peak signal-to-noise ratio per image, in dB.

    ``PSNR = 10 log10(data_range^2 / MSE)`` with the MSE over all pixels and channels of each
    image. For images in ``[-1, 1]`` (``data_range=2``) this equals the PSNR of the same
    images mapped to ``[0, 1]`` with ``data_range=1``. Identical images give ``inf``.

    Args:
      x, y: ``(B, H, W, C)`` or ``(H, W, C)`` arrays (values not clipped or quantized).
      data_range: the width of the value range of the inputs (2.0 for ``[-1, 1]``).
      crop: pixels removed from each border before the comparison (SR evaluation often
        crops ``scale`` pixels).
      y_channel: compare only BT.601 luma (:func:`rgb_to_y`, needs C = 3), as in common SR
        evaluation.

    Returns:
      ``(B,)`` array (``()`` for HWC inputs). Works under ``jax.jit``.
    """
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be positive, got {data_range}")
    x, y, was_hwc = _prepare("psnr", x, y, crop)
    peak = data_range**2
    if y_channel:
        # rgb_to_y maps a range of 2 to [0, 1]; only Y(x) - Y(y) matters, which is linear in
        # x - y, so a range of `data_range` becomes one of data_range / 2 on its output.
        x, y = rgb_to_y(x), rgb_to_y(y)
        peak = (data_range / 2.0) ** 2
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
    out = 10.0 * jnp.log10(peak / mse)
    return out[0] if was_hwc else out


def _gaussian_window(dtype) -> np.ndarray:
    """The 11-tap Gaussian (sigma 1.5) of ``scipy.ndimage.gaussian_filter``, normalised."""
    radius = SSIM_WINDOW // 2
    r = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return (g / g.sum()).astype(dtype)


def _filter_valid(stack, g):
    """Separable Gaussian filter of every channel of (B, H, W, K), 'valid' region only."""
    k = stack.shape[-1]
    n = g.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    out = stack
    for kshape in ((n, 1, 1, 1), (1, n, 1, 1)):
        kernel = jnp.broadcast_to(g.reshape(kshape), kshape[:3] + (k,))
        out = lax.conv_general_dilated(
            out,
            kernel,
            (1, 1),
            "VALID",
            dimension_numbers=dn,
            feature_group_count=k,
            precision=lax.Precision.HIGHEST,
        )
    return out


@jax.jit
def _ssim_core(x, y):
    """SSIM of prepared (B, H, W, C) images on [0, 1]: returns (B,)."""
    c = x.shape[-1]
    g = jnp.asarray(_gaussian_window(np.dtype(x.dtype)))
    # Subtract a per-image constant before filtering: variances and covariances do not change,
    # and the local moments lose less precision to cancellation in float32.
    cx = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    cy = jnp.mean(y, axis=(1, 2, 3), keepdims=True)
    xc, yc = x - cx, y - cy
    moments = _filter_valid(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1), g)
    mxc, myc, exx, eyy, exy = (moments[..., i * c : (i + 1) * c] for i in range(5))
    vx = exx - mxc * mxc
    vy = eyy - myc * myc
    vxy = exy - mxc * myc
    mx, my = mxc + cx, myc + cy
    c1 = SSIM_K1**2
    c2 = SSIM_K2**2
    num = (2.0 * mx * my + c1) * (2.0 * vxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))


def ssim(x, y, *, crop: int = 0, y_channel: bool = False):
    """Structural similarity (Wang et al. 2004) per image, averaged over channels.

    Images in ``[-1, 1]`` are mapped to ``[0, 1]`` and compared with data range 1: Gaussian
    window of 11 taps with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, population (not sample)
    covariances, SSIM map averaged over the region where the window fits inside the image,
    per channel, then averaged over channels. This is
    ``skimage.metrics.structural_similarity(x01, y01, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``.

    Args:
      x, y: ``(B, H, W, C)`` or ``(H, W, C)`` arrays in ``[-1, 1]`` with H, W >= 11 (after
        ``crop``).
      crop: pixels removed from each border first.
      y_channel: compare BT.601 luma only (:func:`rgb_to_y`, on the [0, 1] scale).

    Returns:
      ``(B,)`` array (``()`` for HWC inputs). Works under ``jax.jit``.
    """
    x, y, was_hwc = _prepare("ssim", x, y, crop)
    h, w = x.shape[1:3]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} (after crop), got {h}x{w}"
        )
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    else:
        x, y = (x + 1.0) / 2.0, (y + 1.0) / 2.0
    out = _ssim_core(x, y)
    return out[0] if was_hwc else out
