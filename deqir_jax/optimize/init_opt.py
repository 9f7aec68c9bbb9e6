"""Optimize the initial noise x_T through the equilibrium (ALGORITHM.md §5).

Each step solves the DeqIR fixed point (warm-started from the previous trajectory), evaluates
a loss of the restored image, and differentiates it with respect to x_T with the chosen
adjoint: implicit (IFT, exact at the fixed point, solved in parallel rounds), rowscan (the same
exact gradient by a reverse scan over rows: T single-row VJPs), phantom (the official choice) or
unrolled.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ..diffusion import DEQMap, initial_trajectory, make_problem, sampler_for
from ..restore import eps_view, make_solver, map_settings
from ..solve import Implicit, Phantom, Result, RowScan, Unrolled, fixed_point
from .losses import make_loss

ADJOINTS = {"implicit": Implicit, "rowscan": RowScan, "phantom": Phantom, "unrolled": Unrolled}


def default_adjoint() -> str:
    """``"rowscan"`` on a CPU (T single-row VJPs cost what T-row VJPs do there, and it needs no
    iterations), ``"implicit"`` (parallel rounds of whole-map VJPs) on a GPU/TPU."""
    return "rowscan" if jax.default_backend() == "cpu" else "implicit"


@dataclasses.dataclass
class InitOptResult:
    """Outcome of :func:`optimize_init`.

    Attributes:
        x_T: (B, H, W, C) best initial noise per image (lowest loss seen).
        image: (B, H, W, C) the restoration from the best x_T.
        initial_image: (B, H, W, C) the restoration from the starting x_T.
        loss: (steps+1, B) loss curve (row 0: before any update).
        psnr: (steps+1, B) PSNR to ``target`` in dB when a target was given, else None.
        iterations: (steps+1,) forward map evaluations per solve.
        forward_converged: (steps+1,) whether each forward solve converged.
        grad_finite: (steps,) whether each gradient was finite (False flags a failed adjoint
            solve under the implicit adjoint: its gradient is NaN then, and the step is skipped).
        seconds: (steps+1,) wall-clock per step.
    """

    x_T: jax.Array
    image: jax.Array
    initial_image: jax.Array
    loss: np.ndarray
    psnr: np.ndarray | None
    iterations: np.ndarray
    forward_converged: np.ndarray
    grad_finite: np.ndarray
    seconds: np.ndarray


@functools.lru_cache(maxsize=16)
def _remat(fn):
    return jax.checkpoint(fn)


def _psnr(img, target):
    mse = jnp.mean(jnp.square(img - target), axis=tuple(range(1, img.ndim)))
    return 10 * jnp.log10(4.0 / mse)


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float):
    """The default optimizer, one object per learning rate (a static argument of the step)."""
    return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 4))
def _step(fmap, solver, adjoint, loss_fn, optimizer, x_T, X0, problem, opt_state):
    def objective(x):
        prob = dataclasses.replace(problem, x_T=x)
        sol = fixed_point(fmap, solver, X0, prob, adjoint=adjoint)
        per_image = loss_fn(sol.value[:, -1])
        return jnp.sum(per_image), (sol, per_image)

    (_, (sol, per_image)), grad = jax.value_and_grad(objective, has_aux=True)(x_T)
    finite = jnp.all(jnp.isfinite(grad))
    updates, new_state = optimizer.update(grad, opt_state, x_T)
    new_x = jnp.where(finite, optax.apply_updates(x_T, updates), x_T)
    new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, opt_state)
    return new_x, new_state, jax.lax.stop_gradient(sol), per_image, finite


def optimize_init(
    model,
    y,
    op,
    *,
    loss: str | Callable = "oracle_l2",
    target=None,
    reference=None,
    timesteps: int | None = None,
    sampler=None,
    steps: int = 50,
    learning_rate: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    adjoint: str | Implicit | RowScan | Phantom | Unrolled = "auto",
    method: str = "anderson",
    solver=None,
    linearize: float | None | str = "default",
    remat: bool = False,
    key=None,
    x_T=None,
    noise=None,
    progress: bool = True,
    lpips_net: str = "alex",
    dtype=jnp.float32,
    **restore_options,
) -> InitOptResult:
    """Optimize x_T (one per image, batched) so the restored image minimises ``loss``.

    Args:
        model, y, op: as for :func:`deqir_jax.restore`.
        loss: ``"oracle_l2"`` (needs ``target``; the paper's oracle study), ``"reference_l2"``
            or ``"reference_lpips"`` (need ``reference``), ``"consistency"`` or a callable.
        steps, learning_rate, optimizer: the optax loop (default ``optax.adam(learning_rate)``).
        patience, min_delta: stop early when the summed loss has not improved by ``min_delta``
            for ``patience`` steps. The best x_T seen is returned either way.
        adjoint: ``"auto"`` (default: :func:`default_adjoint`, the exact gradient by the
            means that suits the backend), ``"implicit"``, ``"rowscan"``, ``"phantom"``,
            ``"unrolled"`` or an adjoint object.
        method, solver: the forward solver (``"anderson"``/``"picard"``, options as restore).
        linearize: the map's linearization as for :func:`deqir_jax.restore` (``"default"``:
            :func:`~deqir_jax.restore.map_settings`; it shortens the forward solve and the
            implicit adjoint's, and leaves the gradient unchanged).
        remat: rematerialize the network in the backward pass (``jax.checkpoint``): less
            memory, one more forward per VJP.
        timesteps, sampler: the sampler's settings as for :func:`deqir_jax.restore` (default:
            the model's recommended ones); its other fields (nw, etw, sigma_y, fresh_noise,
            ccdf, ...) may be given as keywords. One x_T per image: a recommended
            ``samples > 1`` is replaced by 1, and an explicit one is an error.

    Returns:
        :class:`InitOptResult`.
    """
    if adjoint == "auto":
        adjoint = default_adjoint()
    if isinstance(adjoint, str):
        if adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be 'auto' or one of {tuple(ADJOINTS)}, got "
                             f"{adjoint!r}")
        adjoint = ADJOINTS[adjoint]()
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if timesteps is not None:
        restore_options["timesteps"] = timesteps
    sampler = sampler_for(model, sampler, **restore_options)
    if "samples" not in restore_options:  # one x_T per image, whatever the model recommends
        sampler = sampler.replace(samples=1)
    if sampler.samples != 1:
        raise ValueError(f"optimize_init optimises one x_T per image: samples must be 1, got "
                         f"{sampler.samples}")
    problem = make_problem(model, y, op, sampler, key=key, x_T=x_T, noise=noise, dtype=dtype)
    loss_fn = make_loss(loss, target=target, reference=reference, op=op, y=problem.y,
                        lpips_net=lpips_net)
    solver = make_solver(method, problem.num_steps, solver)  # (ccdf: fewer rows than T)
    eps_fn = _remat(model.eps_fn) if remat else model.eps_fn
    order, linearize = map_settings(method, solver=solver, linearize=linearize)
    fmap = DEQMap(eps_view(eps_fn, problem.x_T.shape[-1]), order=order, linearize=linearize)
    optimizer = _adam(float(learning_rate)) if optimizer is None else optimizer
    x = problem.x_T
    opt_state = optimizer.init(x)
    X = initial_trajectory(problem)
    tgt = None if target is None else jnp.asarray(target, dtype)
    losses, psnrs, iters, conv, finite_flags, secs = [], [], [], [], [], []
    best_loss = best_x = best_img = first_img = None
    stale, best_total = 0, np.inf
    bar = tqdm(range(steps + 1), desc="optimize x_T", disable=not progress)
    for i in bar:
        t0 = time.perf_counter()
        new_x, new_state, sol, per_image, finite = _step(
            fmap, solver, adjoint, loss_fn, optimizer, x, X, problem, opt_state
        )
        per_image = np.asarray(per_image)
        img = sol.value[:, -1]
        secs.append(time.perf_counter() - t0)
        losses.append(per_image)
        iters.append(int(sol.stats.map_evals))
        conv.append(int(sol.result) == Result.CONVERGED)
        if tgt is not None:
            psnrs.append(np.asarray(_psnr(img, tgt)))
        if first_img is None:
            first_img, best_loss, best_x, best_img = img, per_image, x, img
        better = per_image < best_loss
        sel = lambda new, old, b=better: jnp.where(b.reshape((-1,) + (1,) * (new.ndim - 1)),
                                                   new, old)
        best_x, best_img = sel(x, best_x), sel(img, best_img)
        best_loss = np.minimum(per_image, best_loss)
        total = float(per_image.sum())
        bar.set_postfix(loss=f"{total:.4g}", iters=iters[-1])
        if i == steps:
            break
        finite_flags.append(bool(finite))
        # Warm start the next solve from this equilibrium (no gradient flows through X0).
        x, opt_state, X = new_x, new_state, sol.value
        if total < best_total - min_delta:
            best_total, stale = total, 0
        else:
            stale += 1
            if patience is not None and stale >= patience:
                break
    return InitOptResult(
        x_T=best_x,
        image=best_img,
        initial_image=first_img,
        loss=np.stack(losses),
        psnr=np.stack(psnrs) if psnrs else None,
        iterations=np.asarray(iters),
        forward_converged=np.asarray(conv),
        grad_finite=np.asarray(finite_flags, bool),
        seconds=np.asarray(secs),
    )
