# ruff: noqa: E402
"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see tests/test_parallel.py).

Prints one JSON line: per method/dtype and device count the max-abs difference of the restored
image to the 1-device result, and the all-gather ops of the compiled 8-device solve.
"""

import json
import re
import warnings

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

import deqir_jax as dq
from deqir_jax.diffusion import DEQMap, GaussianModel, initial_trajectory, sequential_sample
from deqir_jax.parallel import ShardedDEQMap, make_mesh, shard_trajectory
from deqir_jax.restore import _parallel, eps_view, make_solver

SHAPE = (8, 6, 3)
T = 16
assert len(jax.devices()) == 8, jax.devices()
base = GaussianModel.create(SHAPE)
# restore() gets params committed to one device, as after loading a checkpoint
committed = GaussianModel(params=jax.device_put(base.params, jax.devices()[0]))
model = base
kw = dict(key=4, image_shape=SHAPE, batch=2, nw=0.2, etw=0.3, fresh_noise=True)
out = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # The float32 map's own rounding at the exact trajectory: |F(X*) − X*| for the unsharded
    # and the 8-way sharded map (the closed form amplifies rounding by 1/√ā_{τ_1} ≈ 100).
    p32 = dq.make_problem(model, None, None, timesteps=T, dtype=jnp.float32, **kw)
    eps = eps_view(model.eps_fn, 3)
    _, traj = sequential_sample(eps, p32, return_trajectory=True)
    rounding = [
        float(np.max(np.abs(np.asarray(f(traj, p32)) - np.asarray(traj))))
        for f in (DEQMap(eps), ShardedDEQMap(DEQMap(eps), make_mesh(8)))
    ]
    out["float32_map_rounding"] = max(rounding)
    for method, dtype, extra in (("anderson", jnp.float64, {}), ("picard", jnp.float64, {}),
                                 ("picard", jnp.float32, {}),
                                 ("anderson", jnp.float64, {"linearize": 0.1})):
        # Picard runs to its exact fixed point (T + 1 evaluations; tol below float32 rounding).
        opts = dict({"tol": 1e-9} if method == "picard" else {}, **extra)
        def run(mesh, method=method, dtype=dtype, opts=opts):
            return dq.restore(committed, None, None, T, method, mesh=mesh, dtype=dtype, **opts,
                              **kw)

        ref = run(make_mesh(1))
        unsharded = run(None)
        diff = lambda a, b: float(np.max(np.abs(np.asarray(a.image) - np.asarray(b.image))))
        rows = {"unsharded": diff(unsharded, ref)}
        for n in (2, 4, 8):
            res = run(make_mesh(n))
            rows[n] = diff(res, ref)
        rows["2x4"] = diff(run(make_mesh(8, batch=2)), ref)  # images 2 ways × timesteps 4
        out[f"{method}{'-linearized' if extra else ''}-{jnp.dtype(dtype).name}"] = rows
    # Sequential on a mesh: data parallel, the images split over all its devices.
    seq_kw = dict(kw, batch=8, dtype=jnp.float64)
    seq = lambda mesh: dq.restore(committed, None, None, T, "sequential", mesh=mesh, **seq_kw)
    ref = seq(None)
    out["sequential-float64"] = {n: diff(seq(make_mesh(n)), ref) for n in (2, 8)}
    out["sequential-float64"]["2x4"] = diff(seq(make_mesh(8, batch=2)), ref)
    # restore with mesh= under jax.jit (anderson on a 2x4 mesh) equals the eager call. (Run
    # to the fixed point: the jitted program rounds differently, and the default solver's
    # exact-settling rule and stop at tol 1 turn a 1e-17 difference into another iterate
    # within the tolerance.)
    mesh = make_mesh(8, batch=2)
    tight = dict(tol=1e-12, stop="relative", dtype=jnp.float64)
    eager = dq.restore(committed, None, None, T, "anderson", mesh=mesh, **tight, **kw)
    jitted = jax.jit(lambda x: dq.restore(committed, None, None, T, "anderson", mesh=mesh,
                                          x_T=x, **tight, **kw).image)(eager.x_T)
    out["jit-float64"] = {"2x4": float(np.max(np.abs(np.asarray(jitted) -
                                                      np.asarray(eager.image))))}
# Clear errors for batches the mesh cannot split.
errors = {}
for name, mesh, method in (("parallel", make_mesh(8, batch=4), "anderson"),
                           ("sequential", make_mesh(8), "sequential")):
    try:
        dq.restore(committed, None, None, T, method, mesh=mesh, **kw)
        errors[name] = None
    except ValueError as err:
        errors[name] = str(err)
out["errors"] = errors
# HLO of the whole 8-device solve: collect all-gathers and their result sizes.
mesh = make_mesh(8)
problem = dq.make_problem(model, None, None, timesteps=T, **kw)
X0 = shard_trajectory(initial_trajectory(problem), mesh)
fmap = ShardedDEQMap(DEQMap(eps_view(model.eps_fn, 3)), mesh)
solver = make_solver("anderson", T)
hlo = _parallel.lower(fmap, solver, X0, problem, jnp.ones((T,))).compile().as_text()
gathers = [line.strip()[:200] for line in hlo.splitlines()
           if re.search(r"=\s*\S+\s+all-gather(-start)?\(", line)]
traj_elems = int(np.prod(X0.shape))
sizes = []
for g in gathers:
    m = re.search(r"=\s*\w+\[([\d,]*)\]", g)
    if m:
        sizes.append(int(np.prod([int(s) for s in m.group(1).split(",") if s] or [1])))
print(json.dumps(dict(results=out, gathers=gathers, gather_sizes=sizes, traj_elems=traj_elems,
                      traj_rows=int(X0.shape[0] * X0.shape[1]), history=solver.m,
                      collective_permutes=hlo.count("collective-permute"))))
