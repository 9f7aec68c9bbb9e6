"""Linear degradation operators (DDRM/DDNM/DeqIR tasks) on batched NHWC images.

    op = deqir_jax.operators.get("sr_bicubic", image_shape=(H, W, 3), scale=4)
    y = op.A(x)                 # (B, H/4, W/4, 3)
    x_pinv = op.A_pinv(y)       # (B, H, W, 3)
    op.project_range(x), op.project_null(x), op.At(y)

Every operator is a pytree (pass it into ``jax.jit``), works for any ``H x W``, preserves the
input dtype, and comes in a clean version (default) and a ``faithful=True`` version that
reproduces the official PyTorch operators, quirks included. See :func:`get`.

Clean vs faithful (details in each class docstring):

=================  ==========================================  ===================================
task               clean (default)                             faithful=True (official code)
=================  ==========================================  ===================================
sr_averagepooling  s x s block mean, A⁺ = replicate            identical (SVD form, same map)
sr_bicubic         reflective bicubic matrices per axis,       official SRConv kernel (half-pixel
                   kernel centred on the block (any s),        offset for odd s), 1-D singular
                   cut ≤ 1e-3·s_max (nothing cut in practice)  values < 3e-2 zeroed
deblur_*, deblur   circular FFT convolution, any 2-D kernel,   separable zero-padded matrices,
                   frequencies ≤ 1e-3·max|λ| removed from      last tap dropped, 1-D singular
                   A and A⁺ (``pinv_threshold``)               values < 3e-2 zeroed, singular
                                                               values mis-tiled (``repeat(1,3)``)
inpainting         masked image, A⁺ = A                        identical
colorization       weights 1/C                                 weights (0.3333, 0.3334, 0.3333)
cs_walshhadamard   m = round(ratio·N)                          m = N // round(1/ratio)
denoising          identity                                    identical
=================  ==========================================  ===================================
"""

from . import masks
from .base import LinearOperator
from .cs import WalshHadamardCS, fwht
from .deblur import FFTDeblur, SVDDeblur
from .kernels import bicubic_kernel_1d, gaussian_kernel_1d, uniform_kernel_1d
from .masks import box_mask, half_mask, load_mask, random_mask
from .pointwise import Colorization, Denoising, Inpainting
from .registry import ALIASES, TASKS, canonical_name, get
from .superres import AveragePoolSR, SeparableSR

__all__ = [
    "get",
    "TASKS",
    "ALIASES",
    "canonical_name",
    "LinearOperator",
    "Denoising",
    "Inpainting",
    "Colorization",
    "AveragePoolSR",
    "SeparableSR",
    "FFTDeblur",
    "SVDDeblur",
    "WalshHadamardCS",
    "fwht",
    "masks",
    "box_mask",
    "random_mask",
    "half_mask",
    "load_mask",
    "gaussian_kernel_1d",
    "uniform_kernel_1d",
    "bicubic_kernel_1d",
]
