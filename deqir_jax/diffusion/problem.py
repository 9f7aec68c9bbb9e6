"""The restoration problem as one pytree (everything the samplers and the DEQ map read), and
its assembly from a model, measurements and a :class:`~deqir_jax.diffusion.Sampler`.

Nothing is closed over (DESIGN.md, Contracts): network params, x_T, y, the noises, the
per-step coefficients and the operator all travel here, so ``jax.custom_vjp`` and ``jax.grad``
reach every array in it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..sampler import sampler_for
from .coefficients import StepCoefficients


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """Arguments of the restoration chain (a JAX pytree).

    Attributes:
        params: network parameters (any pytree).
        x_T: (B, H, W, C) initial noise.
        y: (B, ...) measurements, or None for unconditional DDIM (A = 0).
        noise: (B, 1, H, W, C) one shared noise (official) or (B, T, H, W, C) fresh per step.
        coeffs: per-step coefficients, arrays of shape (T,).
        op: the degradation operator (a pytree with ``A_pinv``/``project_range``), or None.
    """

    params: Any
    x_T: jax.Array
    y: Any
    noise: jax.Array
    coeffs: StepCoefficients
    op: Any = None

    @property
    def num_steps(self) -> int:
        return self.coeffs.num_steps

    def apy(self):
        """``A⁺y`` (zeros without an operator), (B, H, W, C)."""
        if self.op is None:
            return jnp.zeros_like(self.x_T)
        return self.op.A_pinv(self.y).astype(self.x_T.dtype)

    def project_range(self, x):
        """``P x = A⁺A x`` on any (..., H, W, C) stack of images (zeros without an operator)."""
        if self.op is None:
            return jnp.zeros_like(x)
        lead = x.shape[:-3]
        flat = x.reshape((-1,) + x.shape[-3:])
        return self.op.project_range(flat).astype(x.dtype).reshape(lead + x.shape[-3:])

    def noise_at(self, i):
        """The noise z_i of step i (0-based) as (B, H, W, C); shared noise ignores i."""
        if self.noise.shape[1] == 1:
            return self.noise[:, 0]
        return jax.lax.dynamic_index_in_dim(self.noise, i, axis=1, keepdims=False)


def _traced(*trees) -> bool:
    """Whether any leaf is a tracer (the call runs inside jit, vmap, grad, ...)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def _check_array(name: str, a, shape=None):
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    # (numpy, not jnp: inside a jit trace even a constant's jnp reduction is a tracer)
    if not _traced(a) and not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return a


def image_keys(key, images: int):
    """One PRNG key per image, shape (images,).

    ``key``: None (seed 0), an int seed, a key (typed, or a raw ``PRNGKey`` uint32 pair): image
    b gets ``fold_in(key, b)``, so an image's draws depend on its key and index only, never on
    its batch neighbours; or an array of ``images`` keys, used as they are (the CLI passes
    ``fold_in(key(seed), i)`` for the i-th image of a folder, so ``dq.restore(key=seed)`` on
    the folder's first images equals ``deqir restore --seed seed``)."""
    if key is None:
        key = 0
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
            raise TypeError(f"key must be an int seed or a PRNG key (jax.random.key(seed)), "
                            f"got an array of dtype {key.dtype} and shape {tuple(key.shape)}")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images))
    if key.shape != (images,):
        raise ValueError(f"key must be one PRNG key or one per image, shape ({images},); got "
                         f"keys of shape {tuple(key.shape)}")
    return key


def row_keys(key, images: int, samples: int = 1):
    """(images·samples, 2) keys: row ``b·K + k`` (sample k of image b) draws x_T and its noise
    from ``split(fold_in(image_keys(key)[b], k))``, so sample 0 is the ``samples=1`` draw."""
    per_image = image_keys(key, images)
    rows = jax.vmap(lambda kb: jax.vmap(lambda k: jax.random.fold_in(kb, k))(
        jnp.arange(samples)))(per_image).reshape(-1)
    return jax.vmap(jax.random.split)(rows)


def make_problem(
    model,
    y,
    op,
    sampler=None,
    *,
    key=None,
    x_T=None,
    noise=None,
    image_shape=None,
    batch: int | None = None,
    dtype=jnp.float32,
    **settings,
) -> Problem:
    """Validate the inputs of :func:`deqir_jax.restore` and assemble its :class:`Problem`.

    ``sampler`` (a :class:`~deqir_jax.diffusion.Sampler`; default: the model's recommended
    settings, else the library's) with ``settings`` (its fields as keywords) overriding it.
    With ``samples = K`` the problem has B·K rows, image-major (row ``b·K + k``): y is
    repeated, and an explicit ``x_T``/``noise`` must have B·K rows. With ``ccdf = k`` the
    problem keeps the last k steps and its ``x_T`` is the start state
    ``√ā A⁺y + √(1−ā) x_T`` at the first kept step's time (:func:`ccdf_problem`).
    """
    sampler = sampler_for(model, sampler, **settings)
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(
            f"dtype is the trajectory's dtype and must be float32 or float64, got "
            f"{jnp.dtype(dtype).name}; to run the network in half precision load the model "
            "with it (dq.models.load(path, dtype=jnp.bfloat16), dq.models.default(dtype=...)): "
            "the trajectory, the prefix scan, the solver's history and its stopping test stay "
            "float32")
    config = getattr(model, "config", None)
    if getattr(config, "prediction", "eps") == "v" and sampler.schedule != "linear":
        raise ValueError(
            f"schedule={sampler.schedule!r} with a v-prediction model: its v is converted to "
            "ε with the linear DDPM schedule it was trained on, so sampling on another "
            "schedule would mix the two; use schedule='linear'")
    K, T = sampler.samples, sampler.timesteps
    if op is not None:
        image_shape = tuple(op.image_shape)
        if y is None:
            raise ValueError("y is required when an operator is given")
        y = jnp.asarray(y)
        expected = tuple(op.measurement_shape)
        if y.ndim == len(expected):
            y = y[None]
        if tuple(y.shape[1:]) != expected:
            raise ValueError(
                f"y must have shape (B, {', '.join(map(str, expected))}) for task {op.name!r}, "
                f"got {tuple(y.shape)}"
            )
        y = _check_array("y", y).astype(dtype)
        images = y.shape[0]
        y = jnp.repeat(y, K, axis=0) if K > 1 else y
    else:
        y = None
        if x_T is not None:
            image_shape = tuple(jnp.shape(x_T)[1:])
            rows = jnp.shape(x_T)[0]
            if rows % K:
                raise ValueError(f"x_T must have B·samples rows, got {rows} rows for "
                                 f"samples={K}")
            batch = rows // K
        if image_shape is None:
            raise ValueError("image_shape (H, W, C) or x_T is required without an operator")
        images = 1 if batch is None else batch
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    shape = (images * K,) + image_shape
    steps = T if sampler.fresh_noise else 1
    if x_T is None or noise is None:
        keys = row_keys(key, images, K)
    if x_T is None:  # (float32 draws for every dtype)
        x_T = jax.vmap(lambda k: jax.random.normal(k[0], image_shape, jnp.float32))(keys)
    what = "B·samples" if K > 1 else "B"
    if jnp.shape(x_T) != shape:
        raise ValueError(f"x_T must have shape {shape} ({what} rows), got "
                         f"{tuple(jnp.shape(x_T))}")
    x_T = _check_array("x_T", x_T).astype(dtype)
    if noise is None:
        noise = jax.vmap(lambda k: jax.random.normal(k[1], (steps,) + image_shape,
                                                     jnp.float32))(keys).astype(dtype)
    else:
        noise = jnp.asarray(noise)
        if noise.shape == shape:
            noise = noise[:, None]
        if noise.shape not in (shape[:1] + (1,) + image_shape, shape[:1] + (T,) + image_shape):
            raise ValueError(
                f"noise must have shape {shape} (shared) or {shape[:1] + (T,) + image_shape} "
                f"(fresh per step), got {tuple(noise.shape)}"
            )
        noise = _check_array("noise", noise).astype(dtype)
    problem = Problem(params=model.params, x_T=x_T, y=y, noise=noise,
                      coeffs=sampler.coefficients(), op=op)
    if sampler.ccdf is None or sampler.ccdf == T:
        return problem
    if op is None:
        raise ValueError("ccdf starts from A⁺y diffused to an intermediate time: it needs an "
                         "operator and y")
    return ccdf_problem(problem, sampler.ccdf)


def ccdf_problem(problem: Problem, steps: int) -> Problem:
    """CCDF (Chung et al., CVPR 2022, "come closer, diffuse faster"): the last ``steps`` steps
    of ``problem``'s schedule, started from ``A⁺y`` forward-diffused to the time of the first
    kept step with the problem's ``x_T`` as the diffusion noise:
    ``x_start = √ā_τ A⁺y + √(1−ā_τ) x_T``. The DEQ fixed point and the sequential sampler
    then have ``steps`` rows; ``steps = T`` is the problem itself."""
    T = problem.num_steps
    if steps == T:
        return problem
    coeffs = problem.coeffs.last(steps)
    c = coeffs.astype(problem.x_T.dtype)
    start = c.sqrt_a[0] * problem.apy() + c.sqrt_1ma[0] * problem.x_T
    noise = problem.noise if problem.noise.shape[1] == 1 else problem.noise[:, T - steps:]
    return dataclasses.replace(problem, x_T=start, noise=noise, coeffs=coeffs)
