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
    coarse_trajectory,
    initial_trajectory,
    make_problem,
    sequential_sample,
)
from .diffusion.problem import _traced
from .sampler import FIELDS, Sampler, sampler_for, split_settings
from .solve import Anderson, Picard, Result, SlidingWindow, Solution, fixed_point

METHODS = ("auto", "sequential", "anderson", "picard")

#: The default parallel solver of ``method="anderson"`` (without ``faithful``): triangular
#: Anderson (ParaTAA) on the official full-order system (``DEFAULT_ORDER = None``) with the
#: per-row noise-scaled stop (tolerance ``DEFAULT_TOL``). Chosen from the depth benchmark,
#: ``experiments/results/bench_depth.md``: the order-2 system reaches sequential quality in
#: fewer rounds at T = 25 but stalls near 27 dB from the sequential x̂ at T = 100 with a
#: residual under the tolerance, so it is one flag away (``order=2``), not the default.
DEFAULT_ORDER = None
#: The per-row stop's tolerance: the largest at which every stop on the default map's
#: committed depth curves (kodim05 at T = 25 and 100 with both samplers, two more images at
#: T = 100) returns sequential quality (within 0.1 dB of the sequential PSNR or ≥ 50 dB from
#: the sequential x̂): 0.5 (``experiments/results/stop_tolerance_subspace.md`` and
#: ``stop_tolerance_stage4.md``). 1 stopped early on deblurring, where the sequential result
#: is 46-63 dB from the truth (3 of 24 curves, up to 13 dB below it), 0.7 on one of them.
DEFAULT_TOL = 0.5
#: The variances ``(s²_null, s²_range)`` of the Gaussian whose ε slope the default parallel
#: map solves exactly (:class:`~deqir_jax.diffusion.DEQMap`'s ``linearize``): 0.1 in the null
#: space of A, 1 in its range. One variance, 0.1, was chosen on DDNM's η = 1
#: (``experiments/results/bench_depth_linearize.md``: 0.1 reaches sequential quality within
#: 5-6 rounds on every task at T = 25; smaller values stop early on colorization, larger
#: ones need more rounds). The range of the usual operators holds the part of an image that
#: carries most of its variance per dimension (luminance for colorization, low frequencies
#: for super-resolution and deblurring), and there the official sampler (``etw`` 0.1) at
#: T = 100 converged slowly with 0.1: colorization needed 17 rounds. With 1 in the range it
#: needs 9, and every task reaches sequential quality in no more rounds than with 0.1
#: (official sampler: kodim05 at T = 25 and 100, two other images at T = 100;
#: ``experiments/results/bench_depth_subspace*.md``). With DDNM's η = 1 (c2 = 0) the range
#: part of a row reads no ε, so only the null-space variance matters there.
DEFAULT_LINEARIZE = (0.1, 1.0)


def map_settings(method: str, *, faithful: bool = False, solver=None, order="default",
                 linearize="default"):
    """``(order, linearize)`` of the fixed-point map, with ``"default"`` resolved: only
    ``method="anderson"`` without ``faithful`` (and without a sliding window) departs from the
    official full-order map, with ``DEFAULT_ORDER`` and ``DEFAULT_LINEARIZE`` (measured in
    ``experiments/results/bench_depth*.md``: with triangular Anderson the linearized map
    stops after 5-12 rounds for DDNM's η = 1 at T = 25-100, where the official map needs
    about T, and earlier than the official map for the official sampler in 10 of 12 cases;
    plain Picard on it is slower with the official sampler, so Picard keeps the official
    map)."""
    default = method == "anderson" and not faithful and not isinstance(solver, SlidingWindow)
    if order == "default":
        order = DEFAULT_ORDER if default else None
    if linearize == "default":
        linearize = DEFAULT_LINEARIZE if default else None
    return order, linearize


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
        stats: ``method`` (the one that ran), ``method_reason``, ``sampler`` (the
            :class:`~deqir_jax.diffusion.Sampler` that ran), ``timesteps`` (rows that ran),
            ``iterations`` (parallel map evaluations; T for sequential), ``nfe`` (network
            evaluations per image), ``depth`` (per image: sequential network rounds, i.e.
            parallel map evaluations until that image stopped plus the coarse pass's steps;
            T for sequential), ``image_result`` and ``image_converged`` (each image's fate),
            ``result`` and ``converged`` (the batch's worst), ``residual`` (per image, the
            solver's stopping measure, the quantity its ``tol`` bounds; None for sequential),
            ``residual_history``, ``order`` and ``linearize`` (the map's; None for
            sequential, which has no map). Eagerly these are plain Python (results
            named ``"converged"``, ``"max_steps"``, ``"nonfinite"`` or ``"sequential"``);
            inside a transformation they are arrays (results as
            :class:`~deqir_jax.solve.Result` codes).
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


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("return_trajectory",))
def _sequential(eps, problem, return_trajectory=False):
    return sequential_sample(eps, problem, return_trajectory=return_trajectory)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _coarse(eps, problem, steps):
    return coarse_trajectory(eps, problem, steps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _parallel(deq_map, solver, X0, problem, row_scale):
    return fixed_point(deq_map, solver, X0, problem, row_scale=row_scale)


def make_solver(method: str, timesteps: int, solver=None, faithful: bool = False, **options):
    """The solver for ``method``: an explicit ``solver`` wins; else ``Anderson.faithful()``
    (official settings) or ``Anderson``/``Picard`` with ``options``. Picard's default step limit
    is T + 1, where it is exact. Anderson's defaults: triangular mixing; the per-row stop
    ``‖F(X)_r − X_r‖/(√D σ_r) ≤ DEFAULT_TOL`` (0.5) with σ_r = √(1−ā) at the row's input time
    (ParaDiGMS's rule; on the last row σ = 0.01, so its RMS change is ≤ 0.005, about 52 dB),
    the tolerance calibrated on the depth benchmark to stop at sequential quality; rows count as
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
    timesteps: int | None = None,
    method: str = "auto",
    *,
    sampler: Sampler | None = None,
    key=None,
    x_T=None,
    noise=None,
    image_shape=None,
    batch: int | None = None,
    solver: Any = None,
    faithful: bool = False,
    chunk_size: int | None = None,
    order: int | None | str = "default",
    linearize: float | None | str = "default",
    coarse: int = 0,
    mesh=None,
    on_max_steps: str = "warn",
    throw: bool = False,
    return_trajectory: bool = False,
    dtype=jnp.float32,
    **options,
) -> Restoration:
    """Restore ``y = A x (+ noise)`` with the diffusion prior of ``model``.

    A JAX function: ``jax.jit``, ``jax.vmap`` and ``jax.grad`` apply to it (w.r.t. y, x_T,
    the noise and the model, a pytree). Called eagerly it also checks the result: non-finite
    images raise :class:`SolverError`, a solve at its step limit warns (``on_max_steps``), and
    the stats are plain Python; inside a transformation the stats are arrays and each image's
    fate is a result code (``throw=True`` raises instead).

    Args:
        model: anything with ``params`` and ``eps_fn(params, x, t)`` (full network output; the
            first C channels are ε), e.g. ``dq.models.load(...)`` or ``GaussianModel``.
        y: (B, *op.measurement_shape) measurements in [-1, 1] units (a single one may omit B).
        op: operator from ``dq.operators.get``; None for unconditional DDIM (DEQ-DDIM).
        timesteps: T sampling steps (shorthand for the sampler's ``timesteps``).
        method: ``"sequential"`` (T network calls in a lax.scan), ``"anderson"`` or
            ``"picard"`` (the DEQ fixed point, one batched call of T rows per iteration), or
            ``"auto"`` (default): sequential on a CPU, anderson on a GPU/TPU (see
            :func:`resolve_method`; ``stats["method_reason"]`` says which ran and why).
        sampler: the sampler's settings, a :class:`~deqir_jax.diffusion.Sampler` (T, nw, etw,
            sigma_y, noise_aware, fresh_noise, schedule, skip_type, ccdf, samples). Default:
            the model's recommended settings (``model.sampler``, stored with its checkpoint),
            else ``Sampler()``. Any of its fields given as a keyword (``etw=0.1``,
            ``samples=8``, ``ccdf=10``, ...) overrides it; ``stats["sampler"]`` is what ran.
            ``samples=K``: K posterior samples per image (independent x_T and noise, solved
            as one batch of B·K rows, image-major); ``image`` is their mean (a Monte-Carlo
            posterior mean: higher PSNR, less detail) and ``samples`` holds all of them;
            explicit ``x_T``/``noise`` then have B·K rows, and the stats are per row.
            ``ccdf=k``: run the last k of the T steps from ``A⁺y`` diffused to that time
            (``√ā A⁺y + √(1−ā) x_T``; CCDF, Chung et al. 2022); ``res.x_T`` is the start state.
        key: int seed or PRNG key: image b draws its x_T and noise from ``fold_in(key, b)``
            (an image's result does not depend on its batch neighbours; ``deqir restore
            --seed k`` gives the i-th image of a folder ``fold_in(key(k), i)``), or an array
            of B keys, one per image. Explicit ``x_T``/``noise`` override the draws.
        solver: an explicit ``Anderson(...)``/``Picard(...)`` or, with ``method="picard"``, a
            ``SlidingWindow(window=W)`` (ParaDiGMS); ``faithful=True`` selects the
            official Anderson settings; other keyword options go to the solver.
        chunk_size: network rows per call (bounds memory for long trajectories).
        order: the order of the fixed-point system (:class:`~deqir_jax.diffusion.DEQMap`):
            None is the official full-order map, k a row k DDNM steps from row r−k.
            ``"default"``: ``DEFAULT_ORDER`` for ``method="anderson"`` without ``faithful``,
            the full order otherwise.
        linearize: None (the official map), the variance s² of the white Gaussian whose
            ε slope the map's prefix scan solves exactly, or a pair ``(s²_null, s²_range)``,
            one variance in the null space of A and one in its range (``DEQMap.linearize``:
            the same fixed point, reached in far fewer rounds, above all by samplers whose ε
            weight is small, such as DDNM's η = 1). ``"default"``: ``DEFAULT_LINEARIZE`` for
            ``method="anderson"`` without ``faithful``, None otherwise (:func:`map_settings`).
        coarse: start the parallel solve from a sequential pass of this many steps spread
            onto the T rows (:func:`~deqir_jax.diffusion.coarse_trajectory`; 0: every row
            x_T, the official start). Its steps count in ``stats["depth"]``.
        mesh: a ``jax.sharding.Mesh`` (``dq.parallel.make_mesh(n)`` or
            ``make_mesh(n, batch=nb)``): the parallel methods split the timestep axis over
            its ``"t"`` devices (T divisible by their count) and, with a ``"b"`` axis, the
            images over those (B divisible by their count); ``"sequential"`` splits the
            images over all its devices (data parallel).
        on_max_steps: ``"warn"``, ``"raise"`` or ``"ignore"`` when the step limit is hit.
            Non-finite values always raise :class:`SolverError` eagerly.
        throw: inside a transformation (jit, vmap, grad), where the eager checks cannot run:
            False (default) reports each image's fate in ``stats["image_result"]`` (codes of
            :class:`~deqir_jax.solve.Result`: 0 converged, 1 step limit, 2 non-finite) and
            returns NaN for a non-finite one; True raises at run time (a ``SolverError``
            message inside JAX's runtime error) when an image is non-finite, or hits the step
            limit with ``on_max_steps="raise"``.
        dtype: the trajectory's dtype, float32 (default) or float64 (with x64 on). Half
            precision belongs to the network: a model loaded with ``dtype=jnp.bfloat16`` or
            ``float16`` computes in it, its ε is cast back, and the state stays float32.

    Returns:
        :class:`Restoration`.
    """
    settings, solver_options = split_settings(options)
    if timesteps is not None:
        settings["timesteps"] = timesteps
    sampler = sampler_for(model, sampler, **settings)
    method, reason = resolve_method(method)
    if on_max_steps not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_max_steps must be 'warn', 'raise' or 'ignore', got {on_max_steps!r}")
    if method == "sequential" and (solver_options or solver is not None):
        raise TypeError(f"{sorted(solver_options) or 'solver'}: solver options do not apply to "
                        f"method='sequential' (the sampler's settings are {FIELDS})")
    if method == "sequential" and (order != "default" or linearize != "default" or coarse):
        raise TypeError("order, linearize and coarse apply to the parallel methods, not "
                        "sequential")
    problem = make_problem(model, y, op, sampler, key=key, x_T=x_T, noise=noise,
                           image_shape=image_shape, batch=batch, dtype=dtype)
    if method != "sequential":
        solver = make_solver(method, problem.num_steps, solver, faithful, **solver_options)
        order, linearize = map_settings(method, faithful=faithful, solver=solver, order=order,
                                        linearize=linearize)
    res = _solve(model, problem, method, solver, chunk_size, order, linearize, coarse, mesh,
                 return_trajectory)
    res.stats.update(method_reason=reason, sampler=sampler)
    if _traced(res):
        if throw:
            _throw(res.stats["image_result"], method, on_max_steps == "raise")
    else:
        _summarize(res, solver, on_max_steps)
    return _per_image(res, sampler.samples)


def _solve(model, problem, method, solver, chunk_size, order, linearize, coarse, mesh,
           return_trajectory) -> Restoration:
    """The pure core of :func:`restore`: arrays in, a :class:`Restoration` whose stats are
    arrays out (the same code runs eagerly and under any transformation)."""
    eps = eps_view(model.eps_fn, problem.x_T.shape[-1])
    T = problem.num_steps  # the steps that run (ccdf: fewer than the schedule's T)
    n = problem.x_T.shape[0]
    if method == "sequential":
        if mesh is not None:  # data parallel: the images split over every device of the mesh
            from .parallel import check_mesh, place_problem

            check_mesh(mesh, n, None)
            problem = place_problem(problem, mesh, tuple(mesh.axis_names))
        out = _sequential(eps, problem, return_trajectory=return_trajectory)
        image, traj = out if return_trajectory else (out, None)
        finite = jnp.all(jnp.isfinite(image), axis=tuple(range(1, image.ndim)))
        codes = jnp.where(finite, Result.CONVERGED, Result.NONFINITE).astype(jnp.int32)
        stats = dict(iterations=T, nfe=T, depth=jnp.full((n,), T), residual=None,
                     residual_history=jnp.zeros((0,), image.dtype), order=None,
                     linearize=None)
        sol = None
    else:
        X0 = _coarse(eps, problem, coarse) if coarse else initial_trajectory(problem)
        deq_map = DEQMap(eps, chunk_size=chunk_size, order=order, linearize=linearize)
        if mesh is not None:
            if isinstance(solver, SlidingWindow):
                raise ValueError("the sliding window runs on one device; drop mesh= or the "
                                 "window")
            from .parallel import (
                ShardedDEQMap,
                batch_axis,
                check_mesh,
                place_problem,
                shard_trajectory,
            )

            deq_map = ShardedDEQMap(deq_map, mesh)
            check_mesh(mesh, n, T, deq_map.axis_name)
            X0 = shard_trajectory(X0, mesh)
            # shard_map takes its local rows (and images) from these.
            problem = place_problem(problem, mesh, batch_axis(mesh))
        row_scale = jnp.asarray(problem.coeffs.sqrt_1ma, problem.x_T.dtype)
        sol = _parallel(deq_map, solver, X0, problem, row_scale)
        image = sol.value[:, -1]
        traj = sol.value if return_trajectory else None
        codes = sol.stats.image_result
        stats = dict(iterations=sol.stats.map_evals, nfe=sol.stats.row_evals + coarse,
                     depth=sol.stats.image_steps + coarse,
                     residual=solver.stop_measure(sol.stats.residual, sol.stats.row_residuals),
                     residual_history=sol.stats.residual_history, order=order,
                     linearize=linearize)
    worst = jnp.max(codes)
    stats.update(method=method, timesteps=T, image_result=codes,
                 image_converged=codes == Result.CONVERGED, result=worst,
                 converged=worst == Result.CONVERGED)
    return Restoration(image, problem.apy(), stats, sol, traj, problem.x_T, problem.noise)


def _summarize(res: Restoration, solver, on_max_steps: str) -> None:
    """The friendly layer, eagerly: the stats as plain Python (worst result over the batch in
    ``result``/``converged``, each image's in ``image_result``/``image_converged``; names:
    ``"converged"``, ``"max_steps"``, ``"nonfinite"``, ``"sequential"``), then the checks:
    :class:`SolverError` for non-finite images, the step limit per ``on_max_steps``."""
    stats = res.stats
    method = stats["method"]
    codes = [Result(int(c)) for c in np.ravel(np.asarray(stats["image_result"]))]
    result = max(codes)

    def name(c):
        return "sequential" if method == "sequential" and c == Result.CONVERGED \
            else c.name.lower()

    hist = np.asarray(stats["residual_history"])
    stats.update(iterations=int(stats["iterations"]), nfe=int(stats["nfe"]),
                 depth=np.asarray(stats["depth"]).tolist(),
                 converged=result == Result.CONVERGED, result=name(result),
                 image_converged=[c == Result.CONVERGED for c in codes],
                 image_result=[name(c) for c in codes],
                 residual=None if stats["residual"] is None
                 else np.asarray(stats["residual"]).tolist(),
                 residual_history=[float(h) for h in hist[~np.isnan(hist)]])
    if result == Result.NONFINITE:
        bad = [i for i, c in enumerate(codes) if c == Result.NONFINITE]
        where = ("the sequential sampler produced" if method == "sequential" else
                 f"{method} solver stopped after {stats['iterations']} map evaluations with")
        raise SolverError(f"{where} non-finite values (NaN or Inf) for image(s) {bad}; no "
                          "image is returned")
    if result == Result.MAX_STEPS and on_max_steps != "ignore":
        msg = (
            f"{method} solver {result.message()} ({solver.max_steps} map evaluations); final "
            f"residual {max(stats['residual']):.3g} > tol {solver.tol}"
        )
        if on_max_steps == "raise":
            raise SolverError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


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
