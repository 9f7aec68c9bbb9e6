"""``dq.restore``: restore images with a diffusion prior, sequentially or as a DEQ fixed point."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .diffusion import (
    DEQMap,
    Problem,
    SlidingWindow,
    coarse_trajectory,
    initial_trajectory,
    sequential_sample,
    step_coefficients,
    windowed_solve,
)
from .solve import Anderson, Picard, Result, Solution, fixed_point

METHODS = ("auto", "sequential", "anderson", "picard")

#: The default parallel solver of ``method="anderson"`` (without ``faithful``): triangular
#: Anderson (ParaTAA) on the official full-order system (``DEFAULT_ORDER = None``) with the
#: per-row noise-scaled stop (tolerance ``DEFAULT_TOL``). Chosen from the depth benchmark,
#: ``experiments/results/bench_depth.md``: the order-2 system reaches sequential quality in
#: fewer rounds at T = 25 but stalls near 27 dB from the sequential x̂ at T = 100 with a
#: residual under the tolerance, so it is one flag away (``order=2``), not the default.
DEFAULT_ORDER = None
DEFAULT_TOL = 1.0


def resolve_method(method: str) -> tuple[str, str]:
    """``(method, reason)``: ``"auto"`` becomes ``"sequential"`` on a CPU, where one batched call
    of T network rows costs about T single-row calls (so no parallel solve can be faster), and
    ``"anderson"`` on accelerators, where the T rows of one call run side by side."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method, "asked for"
    backend = jax.default_backend()
    if backend == "cpu":
        return "sequential", ("auto on a CPU: a batched call of T network rows costs about T "
                              "single-row calls, so the parallel solve cannot be faster")
    return "anderson", (f"auto on {backend}: the T rows of one batched network call run side "
                        "by side, so each parallel round costs about one sequential step")


class SolverError(RuntimeError):
    """The fixed-point solve failed (non-finite values, or no convergence when asked to raise)."""


@dataclasses.dataclass
class Restoration:
    """Result of :func:`restore`; a pytree (arrays, the solution and the stats' arrays are
    leaves; the stats' plain Python entries are static), so it can leave ``jax.jit``.

    Attributes:
        image: (B, H, W, C) restored images in [-1, 1] (not clipped).
        apy: (B, H, W, C) ``A⁺y`` (zeros without an operator).
        stats: plain-Python summary: ``method`` (the one that ran), ``method_reason``,
            ``timesteps``, ``iterations`` (parallel map evaluations; T for sequential),
            ``nfe`` (network evaluations per image), ``depth`` (per image: sequential network
            rounds, i.e. parallel map evaluations until that image stopped plus the coarse
            pass's steps; T for sequential),
            ``converged`` and ``result`` (the batch's worst), ``image_converged`` and
            ``image_result`` (each image's own: ``"converged"``, ``"max_steps"``,
            ``"nonfinite"`` or ``"sequential"``), ``residual`` (per image),
            ``residual_history``. Inside a transformation the per-image entries (and
            ``converged``, ``result``) are arrays; result codes are
            :class:`~deqir_jax.solve.Result` values.
        solution: the :class:`~deqir_jax.solve.Solution` (None for sequential).
        trajectory: (B, T, H, W, C) all states, when asked for.
        x_T, noise: the initial noise and the step noise actually used.
        samples: with ``samples=K > 1``, the K restorations of every image, (B, K, H, W, C),
            whose mean is ``image``; None otherwise.
    """

    image: jax.Array
    apy: jax.Array
    stats: dict
    solution: Solution | None
    trajectory: jax.Array | None
    x_T: jax.Array
    noise: jax.Array
    samples: jax.Array | None = None


_ARRAY_FIELDS = ("image", "apy", "solution", "trajectory", "x_T", "noise", "samples")


def _flatten_restoration(res: Restoration):
    """A pytree: the arrays (and the solution, a pytree) are children, so a Restoration can be
    returned from ``jax.jit`` or mapped over; the stats' arrays are children too, their plain
    Python entries (method, reason, eager summaries) static."""
    keys = sorted(res.stats)
    dynamic = [k for k in keys if isinstance(res.stats[k], (jax.Array, np.ndarray))]
    static = tuple((k, isinstance(res.stats[k], list),
                    tuple(res.stats[k]) if isinstance(res.stats[k], list) else res.stats[k])
                   for k in keys if k not in dynamic)
    children = tuple(getattr(res, f) for f in _ARRAY_FIELDS) + tuple(
        res.stats[k] for k in dynamic)
    return children, (tuple(dynamic), static)


def _unflatten_restoration(aux, children):
    dynamic, static = aux
    n = len(_ARRAY_FIELDS)
    stats = {k: list(v) if was_list else v for k, was_list, v in static}
    stats.update(zip(dynamic, children[n:], strict=True))
    stats = {k: stats[k] for k in sorted(stats)}
    return Restoration(stats=stats, **dict(zip(_ARRAY_FIELDS, children[:n], strict=True)))


jax.tree_util.register_pytree_node(Restoration, _flatten_restoration, _unflatten_restoration)


@functools.lru_cache(maxsize=64)
def eps_view(eps_fn, channels: int):
    """``(params, x, t) -> eps_fn(params, x, t)[..., :channels]``: the ε channels of a network
    whose full output may also hold learned variances. Cached, so jit sees the same function."""

    def eps(params, x, t):
        return eps_fn(params, x, t)[..., :channels]

    return eps


def _as_key(key):
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


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


def make_problem(
    model,
    y,
    op,
    *,
    timesteps: int = 25,
    key=None,
    x_T=None,
    noise=None,
    nw: float = 0.0,
    etw: float = 0.0,
    sigma_y: float = 0.0,
    noise_aware: bool = False,
    fresh_noise: bool = False,
    schedule: str = "linear",
    skip_type: str = "uniform",
    image_shape=None,
    batch: int | None = None,
    dtype=jnp.float32,
    ccdf: int | None = None,
) -> Problem:
    """Validate the inputs of :func:`restore` and assemble the :class:`Problem` pytree.

    ``ccdf=k`` (see :func:`restore`) keeps the last k steps of the T-step schedule and makes
    the problem's ``x_T`` the start state ``√ā A⁺y + √(1−ā) x_T`` at the first kept step's
    time; k = T (or None) is the plain problem.
    """
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(
            f"dtype is the trajectory's dtype and must be float32 or float64, got "
            f"{jnp.dtype(dtype).name}; to run the network in half precision load the model "
            "with it (dq.models.load(path, dtype=jnp.bfloat16), dq.models.default(dtype=...)): "
            "the trajectory, the prefix scan, the solver's history and its stopping test stay "
            "float32")
    config = getattr(model, "config", None)
    if getattr(config, "prediction", "eps") == "v" and schedule != "linear":
        raise ValueError(
            f"schedule={schedule!r} with a v-prediction model: its v is converted to ε with "
            "the linear DDPM schedule it was trained on, so sampling on another schedule would "
            "mix the two; use schedule='linear'")
    coeffs = step_coefficients(
        timesteps, nw=nw, etw=etw, sigma_y=sigma_y, noise_aware=noise_aware,
        schedule=schedule, skip_type=skip_type,
    )
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
        batch = y.shape[0]
    else:
        y = None
        if x_T is not None:
            image_shape = tuple(jnp.shape(x_T)[1:])
            batch = jnp.shape(x_T)[0]
        if image_shape is None:
            raise ValueError("image_shape (H, W, C) or x_T is required without an operator")
        batch = 1 if batch is None else batch
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    k_x, k_z = jax.random.split(_as_key(key))
    shape = (batch,) + image_shape
    if x_T is None:
        x_T = jax.random.normal(k_x, shape, jnp.float32)  # same draw for every dtype
    x_T = _check_array("x_T", x_T, shape).astype(dtype)
    steps = timesteps if fresh_noise else 1
    if noise is None:
        noise = jax.random.normal(k_z, (batch, steps) + image_shape, jnp.float32).astype(dtype)
    else:
        noise = jnp.asarray(noise)
        if noise.shape == shape:
            noise = noise[:, None]
        if noise.shape not in ((batch, 1) + image_shape, (batch, timesteps) + image_shape):
            raise ValueError(
                f"noise must have shape {shape} (shared) or {(batch, timesteps) + image_shape} "
                f"(fresh per step), got {tuple(noise.shape)}"
            )
        noise = _check_array("noise", noise).astype(dtype)
    problem = Problem(params=model.params, x_T=x_T, y=y, noise=noise, coeffs=coeffs, op=op)
    if ccdf is None or ccdf == timesteps:
        return problem
    if isinstance(ccdf, bool) or not isinstance(ccdf, (int, np.integer)) \
            or not 1 <= ccdf <= timesteps:
        raise ValueError(f"ccdf must be an integer in [1, T={timesteps}] (the number of final "
                         f"steps to run) or None, got {ccdf!r}")
    if op is None:
        raise ValueError("ccdf starts from A⁺y diffused to an intermediate time: it needs an "
                         "operator and y")
    return ccdf_problem(problem, int(ccdf))


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


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("return_trajectory",))
def _sequential(eps, problem, return_trajectory=False):
    return sequential_sample(eps, problem, return_trajectory=return_trajectory)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _coarse(eps, problem, steps):
    return coarse_trajectory(eps, problem, steps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _parallel(deq_map, solver, X0, problem, row_scale):
    if isinstance(solver, SlidingWindow):
        return windowed_solve(deq_map, solver, problem)
    return fixed_point(deq_map, solver, X0, problem, row_scale=row_scale)


def make_solver(method: str, timesteps: int, solver=None, faithful: bool = False, **options):
    """The solver for ``method``: an explicit ``solver`` wins; else ``Anderson.faithful()``
    (official settings) or ``Anderson``/``Picard`` with ``options``. Picard's default step limit
    is T + 1, where it is exact. Anderson's defaults: triangular mixing; the per-row stop
    ``‖F(X)_r − X_r‖/(√D σ_r) ≤ 1`` with σ_r = √(1−ā) at the row's input time (ParaDiGMS's
    rule; on the last row σ = 0.01, so its RMS change is ≤ 0.01, about 46 dB), the tolerance
    calibrated on the depth benchmark to stop ≥ 40 dB from the sequential x̂; rows count as
    settled for the causal rule only when exactly fixed (``settle_tol=0``), which keeps the
    solve exact within T + 2 evaluations."""
    if solver is not None:
        if isinstance(solver, SlidingWindow) and method != "picard":
            raise ValueError("a SlidingWindow solver is a windowed Picard: use method='picard'")
        return solver
    if method == "anderson":
        if faithful:
            return Anderson.faithful(**options)
        options.setdefault("max_steps", timesteps + 2)
        options.setdefault("mixing", "triangular")
        options.setdefault("stop", "per_row")
        options.setdefault("tol", DEFAULT_TOL)
        options.setdefault("settle_tol", 0.0)
        return Anderson(**options)
    if method == "picard":
        options.setdefault("max_steps", timesteps + 1)
        return Picard(**options)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def restore(
    model,
    y,
    op,
    timesteps: int = 25,
    method: str = "auto",
    *,
    key=None,
    x_T=None,
    noise=None,
    nw: float = 0.0,
    etw: float = 0.0,
    sigma_y: float = 0.0,
    noise_aware: bool = False,
    fresh_noise: bool = False,
    schedule: str = "linear",
    skip_type: str = "uniform",
    image_shape=None,
    batch: int | None = None,
    solver: Any = None,
    faithful: bool = False,
    chunk_size: int | None = None,
    order: int | None | str = "default",
    coarse: int = 0,
    ccdf: int | None = None,
    mesh=None,
    on_max_steps: str = "warn",
    throw: bool = False,
    return_trajectory: bool = False,
    samples: int = 1,
    dtype=jnp.float32,
    **solver_options,
) -> Restoration:
    """Restore ``y = A x (+ noise)`` with the diffusion prior of ``model``.

    Args:
        model: anything with ``params`` and ``eps_fn(params, x, t)`` (full network output; the
            first C channels are ε), e.g. ``dq.models.load(...)`` or ``GaussianModel``.
        y: (B, *op.measurement_shape) measurements in [-1, 1] units (a single one may omit B).
        op: operator from ``dq.operators.get``; None for unconditional DDIM (DEQ-DDIM).
        timesteps: T sampling steps (official uniform skip).
        method: ``"sequential"`` (T network calls in a lax.scan), ``"anderson"`` or
            ``"picard"`` (the DEQ fixed point, one batched call of T rows per iteration), or
            ``"auto"`` (default): sequential on a CPU, anderson on a GPU/TPU (see
            :func:`resolve_method`; ``stats["method_reason"]`` says which ran and why).
        key: PRNG key or int seed for x_T and the noise; explicit ``x_T``/``noise`` override it.
        nw, etw: DeqIR's noise and ε weights (official example: nw 0, etw 0.1).
        sigma_y: measurement noise std in [0, 1] pixel units (used by ``noise_aware``).
        noise_aware: DDNM+ correction for noisy y. fresh_noise: a new z per step (standard
            DDNM) instead of the official single shared z.
        solver: an explicit ``Anderson(...)``/``Picard(...)`` or, with ``method="picard"``, a
            ``SlidingWindow(window=W)`` (ParaDiGMS); ``faithful=True`` selects the
            official Anderson settings; other keyword options go to the solver.
        chunk_size: network rows per call (bounds memory for long trajectories).
        order: the order of the fixed-point system (:class:`~deqir_jax.diffusion.DEQMap`):
            None is the official full-order map, k a row k DDNM steps from row r−k.
            ``"default"``: ``DEFAULT_ORDER`` for ``method="anderson"`` without ``faithful``,
            the full order otherwise.
        coarse: start the parallel solve from a sequential pass of this many steps spread
            onto the T rows (:func:`~deqir_jax.diffusion.coarse_trajectory`; 0: every row
            x_T, the official start). Its steps count in ``stats["depth"]``.
        ccdf: run only the last ``ccdf`` of the T steps, starting from ``A⁺y`` diffused to
            that time (``√ā A⁺y + √(1−ā) x_T``; CCDF, Chung et al. 2022): an initialisation
            that uses the prior where it is good (small t) and needs ``ccdf`` rows instead of
            T (fewer network calls, a smaller fixed point). None (default) or T: the plain
            sampler from x_T. ``res.x_T`` is then the start state.
        mesh: a ``jax.sharding.Mesh`` (``dq.parallel.make_mesh(n)`` or
            ``make_mesh(n, batch=nb)``): the parallel methods split the timestep axis over
            its ``"t"`` devices (T divisible by their count) and, with a ``"b"`` axis, the
            images over those (B divisible by their count); ``"sequential"`` splits the
            images over all its devices (data parallel).
        on_max_steps: ``"warn"``, ``"raise"`` or ``"ignore"`` when the step limit is hit.
            Non-finite values always raise :class:`SolverError`.
        throw: inside a transformation (jit, vmap, grad), where the eager checks cannot run:
            False (default) reports each image's fate in ``stats["result"]`` (an array) and
            returns NaN for a non-finite one; True raises at run time (a ``SolverError``
            message inside JAX's runtime error) when an image is non-finite, or hits the step
            limit with ``on_max_steps="raise"``. Eagerly the checks always run.
        dtype: the trajectory's dtype, float32 (default) or float64 (with x64 on). Half
            precision belongs to the network: a model loaded with ``dtype=jnp.bfloat16`` or
            ``float16`` computes in it, its ε is cast back, and the state stays float32.
        samples: K posterior samples per image (independent x_T and noise, solved together
            as one batch of B·K); ``image`` is their mean, a Monte-Carlo estimate of the
            posterior mean (the MMSE estimate: higher PSNR than any one sample, less detail),
            and ``samples`` holds all of them. Explicit ``x_T``/``noise`` then have B·K rows,
            image-major (row ``b·K + k``). Everything else (stats, trajectory, residuals)
            is per row of the B·K batch.

    Returns:
        :class:`Restoration`.
    """
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if samples > 1:  # solve B·K rows as one batch; _per_image folds them back
        # (with an operator, make_problem checks x_T against the repeated y)
        if op is None and x_T is not None and jnp.shape(x_T)[0] % samples:
            raise ValueError(f"x_T must have B·samples rows, got {jnp.shape(x_T)[0]} rows "
                             f"for samples={samples}")
        if op is not None:
            y = jnp.asarray(y)
            if y.ndim == len(op.measurement_shape):
                y = y[None]
            y = jnp.repeat(y, samples, axis=0)
        elif x_T is None:
            batch = (1 if batch is None else batch) * samples
    method, reason = resolve_method(method)
    if on_max_steps not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_max_steps must be 'warn', 'raise' or 'ignore', got {on_max_steps!r}")
    problem = make_problem(
        model, y, op, timesteps=timesteps, key=key, x_T=x_T, noise=noise, nw=nw, etw=etw,
        sigma_y=sigma_y, noise_aware=noise_aware, fresh_noise=fresh_noise, schedule=schedule,
        skip_type=skip_type, image_shape=image_shape, batch=batch, dtype=dtype, ccdf=ccdf,
    )
    eps = eps_view(model.eps_fn, problem.x_T.shape[-1])
    apy = problem.apy()
    T = problem.num_steps  # the steps that run (ccdf: fewer than timesteps)
    if method == "sequential":
        if solver_options or solver is not None:
            raise TypeError("solver options do not apply to method='sequential'")
        if order != "default" or coarse:
            raise TypeError("order and coarse apply to the parallel methods, not sequential")
        if mesh is not None:  # data parallel: the images split over every device of the mesh
            from .parallel import place_problem

            if problem.x_T.shape[0] % mesh.size:
                raise ValueError(f"method='sequential' on a mesh splits the images over its "
                                 f"{mesh.size} devices: the batch of {problem.x_T.shape[0]} "
                                 "images must be divisible by that")
            problem = place_problem(problem, mesh, tuple(mesh.axis_names))
        out = _sequential(eps, problem, return_trajectory=return_trajectory)
        image, traj = out if return_trajectory else (out, None)
        if not _traced(image) and not bool(jnp.all(jnp.isfinite(image))):
            raise SolverError("the sequential sampler produced non-finite values")
        if throw and _traced(image):
            finite = jnp.all(jnp.isfinite(image), axis=tuple(range(1, image.ndim)))
            _throw(jnp.where(finite, Result.CONVERGED, Result.NONFINITE), method, False)
        n = image.shape[0]
        stats = dict(method=method, method_reason=reason, timesteps=T, iterations=T, nfe=T,
                     depth=[T] * n, converged=True, result="sequential",
                     image_converged=[True] * n, image_result=["sequential"] * n,
                     residual=None, residual_history=[])
        return _per_image(
            Restoration(image, apy, stats, None, traj, problem.x_T, problem.noise), samples)

    solver = make_solver(method, T, solver, faithful, **solver_options)
    if order == "default":
        order = DEFAULT_ORDER if method == "anderson" and not faithful and not isinstance(
            solver, SlidingWindow) else None
    X0 = _coarse(eps, problem, coarse) if coarse else initial_trajectory(problem)
    if mesh is None:
        deq_map = DEQMap(eps, chunk_size=chunk_size, order=order)
    elif isinstance(solver, SlidingWindow):
        raise ValueError("the sliding window runs on one device; drop mesh= or the window")
    else:
        from .parallel import ShardedDEQMap, batch_axis, check_mesh, place_problem, shard_trajectory

        deq_map = ShardedDEQMap(eps, mesh, chunk_size=chunk_size, order=order)
        check_mesh(mesh, X0.shape[0], T, deq_map.axis_name)
        X0 = shard_trajectory(X0, mesh)
        # shard_map takes its local rows (and images) from these.
        problem = place_problem(problem, mesh, batch_axis(mesh))
    row_scale = jnp.asarray(problem.coeffs.sqrt_1ma, dtype)
    sol = _parallel(deq_map, solver, X0, problem, row_scale)
    image = sol.value[:, -1]
    traj = sol.value if return_trajectory else None
    stats = dict(method=method, method_reason=reason, timesteps=T,
                 iterations=sol.stats.map_evals, nfe=sol.stats.row_evals + coarse,
                 depth=sol.stats.image_steps + coarse,
                 converged=sol.stats.image_result == Result.CONVERGED,
                 result=sol.stats.image_result,
                 image_converged=sol.stats.image_result == Result.CONVERGED,
                 image_result=sol.stats.image_result, residual=sol.stats.residual,
                 residual_history=sol.stats.residual_history)
    if _traced(sol):
        # Inside a transformation (jit, vmap, grad): no host-side checks; the stats stay arrays
        # (per-image result codes in "result": 0 converged, 1 step limit, 2 non-finite).
        if throw:
            _throw(sol.stats.image_result, method, on_max_steps == "raise")
        return _per_image(Restoration(image, apy, stats, sol, traj, problem.x_T,
                                      problem.noise), samples)
    # Eagerly: a plain-Python summary (worst result over the batch), warnings and errors.
    result = Result(int(sol.result))
    codes = [Result(int(c)) for c in np.ravel(np.asarray(sol.stats.image_result))]
    hist = np.asarray(stats["residual_history"])
    stats.update(iterations=int(stats["iterations"]), nfe=int(stats["nfe"]),
                 depth=np.asarray(stats["depth"]).tolist(),
                 converged=result == Result.CONVERGED, result=result.name.lower(),
                 image_converged=[c == Result.CONVERGED for c in codes],
                 image_result=[c.name.lower() for c in codes],
                 residual=np.asarray(stats["residual"]).tolist(),
                 residual_history=[float(h) for h in hist[~np.isnan(hist)]])
    if result == Result.NONFINITE:
        raise SolverError(
            f"{method} solver stopped after {stats['iterations']} map evaluations: "
            f"{result.message()}; no image is returned"
        )
    if result == Result.MAX_STEPS and on_max_steps != "ignore":
        msg = (
            f"{method} solver {result.message()} ({solver.max_steps} map evaluations); final "
            f"residual {max(stats['residual']):.3g} > tol {solver.tol}"
        )
        if on_max_steps == "raise":
            raise SolverError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return _per_image(Restoration(image, apy, stats, sol, traj, problem.x_T, problem.noise),
                      samples)


def _throw(codes, method: str, max_steps: bool) -> None:
    """Raise :class:`SolverError` at run time (from inside a transformation) when an image is
    non-finite, or at its step limit when ``max_steps``."""

    def check(codes):
        codes = np.asarray(codes)
        bad = np.flatnonzero(codes == Result.NONFINITE)
        if bad.size:
            raise SolverError(f"{method}: non-finite values (NaN or Inf) for image(s) "
                              f"{bad.tolist()}; no image is returned")
        late = np.flatnonzero(codes == Result.MAX_STEPS)
        if max_steps and late.size:
            raise SolverError(f"{method} solver did not converge within its step limit for "
                              f"image(s) {late.tolist()}")

    jax.debug.callback(check, codes)


def _per_image(res: Restoration, samples: int) -> Restoration:
    """Fold the B·K rows of a ``samples=K`` solve into K samples per image (image-major);
    ``image`` becomes their mean, ``apy`` one row per image."""
    if samples == 1:
        return res
    per = res.image.reshape((-1, samples) + res.image.shape[1:])
    return dataclasses.replace(res, image=per.mean(axis=1), apy=res.apy[::samples], samples=per)
