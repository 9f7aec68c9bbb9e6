"""Reverse mode inside loops on a CPU: JAX's convolution derivative against the project's.

XLA's CPU convolution transposes (input and kernel gradients) leave their fast path inside a
``while`` loop (a ``lax.scan``), which is where every backward pass of this project runs
(reverse mode through the sequential sampler, the RowScan adjoint, the implicit adjoint's
solver rounds). ``deqir_jax.models.layers.conv2d`` differentiates as shifted slices times
channel matmuls on a CPU. This script times, in one process, both derivatives of the same
computations (jitted, after compilation, best of ``--repeats``):

* one 3x3 convolution (64 → 64 channels, 2 × 32 × 32) differentiated 8 times in a scan, with
  respect to its input and kernel, against the convolution itself 8 times in a scan;
* ``jax.grad`` of an L2 loss through the sequential sampler (default prior, T steps, bicubic
  SR ×4 on a random 2-image batch) with respect to x_T and with respect to the network's
  parameters, against the sampler's forward pass.

    python experiments/bench_conv_grad.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import deqir_jax as dq
from deqir_jax.diffusion import sequential_sample
from deqir_jax.models import layers
from deqir_jax.restore import eps_view, make_problem

sys.path.insert(0, str(Path(__file__).parent))
from _report import best_time, header, machine, table, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"lax": layers._lax_conv, "deqir_jax": layers._conv_cpu}


def single_conv(repeats):
    k = jax.random.normal(jax.random.key(0), (3, 3, 64, 64)) * 0.05
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 64))
    conv = lambda z, k: layers.conv2d(z, k, 1, ((1, 1), (1, 1)))

    def forward(x, k):
        return jax.lax.scan(lambda z, i: (conv(z, k) * 0.5, None), x, jnp.arange(8))[0]

    def backward(x, k):
        def body(carry, i):
            g, acc = carry
            gx, gk = jax.vjp(lambda z, kk: conv(z, kk), x * i, k)[1](g)
            return (gx * 0.5, acc + gk), None
        return jax.lax.scan(body, (x, jnp.zeros_like(k)), jnp.arange(8.0))[0]

    return best_time(jax.jit(forward), x, k, repeats=repeats), \
        best_time(jax.jit(backward), x, k, repeats=repeats)


def sampler(T, size, repeats):
    model = dq.models.default()
    eps = eps_view(model.eps_fn, 3)
    gt = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)), jnp.float32)
    op = dq.operators.get("sr_bicubic", image_shape=gt.shape[1:], scale=4)
    prob = make_problem(model, op.A(gt), op, dq.Sampler.official(), timesteps=T, key=0)
    loss = lambda p: jnp.sum(jnp.square(sequential_sample(eps, p) - gt))
    fwd = jax.jit(lambda p: sequential_sample(eps, p))
    g_x = jax.jit(jax.grad(lambda x: loss(dataclasses.replace(prob, x_T=x))))
    g_p = jax.jit(jax.grad(lambda w: loss(dataclasses.replace(prob, params=w))))
    return (best_time(fwd, prob, repeats=repeats), best_time(g_x, prob.x_T, repeats=repeats),
            best_time(g_p, prob.params, repeats=repeats))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_conv_grad"))
    args = p.parse_args(argv)
    if jax.default_backend() != "cpu":
        sys.exit("bench_conv_grad compares the CPU derivative: run it on a CPU backend")
    rows = []
    for name, rule in VARIANTS.items():
        layers._conv_cpu, keep = rule, layers._conv_cpu  # conv2d looks it up at trace time
        try:
            c_fwd, c_bwd = single_conv(args.repeats)
            s_fwd, s_gx, s_gp = sampler(args.timesteps, args.size, args.repeats)
        finally:
            layers._conv_cpu = keep
        rows.append(dict(derivative=name, conv_fwd_ms=c_fwd * 1e3, conv_vjp_ms=c_bwd * 1e3,
                         conv_vjp_over_fwd=c_bwd / c_fwd, sampler_fwd_s=s_fwd,
                         grad_xT_s=s_gx, grad_params_s=s_gp,
                         grad_xT_over_fwd=s_gx / s_fwd, grad_params_over_fwd=s_gp / s_fwd))
        print(rows[-1], flush=True)
    speed = {k: rows[0][k] / rows[1][k] for k in ("conv_vjp_ms", "grad_xT_s", "grad_params_s")}
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = header("Convolution derivatives inside loops (CPU)", "bench_conv_grad.py", [
        f"machine: {machine()}",
        "conv: one 3x3 convolution, 64 → 64 channels, input 2 × 32 × 32; `conv_fwd_ms`: 8 "
        "convolutions in a scan; `conv_vjp_ms`: 8 VJPs (input and kernel) in a scan",
        f"sampler: default prior, T = {args.timesteps}, bicubic SR ×4, 2 random "
        f"{args.size}-px images; `grad_xT_s` / `grad_params_s`: jax.grad of an L2 loss "
        "through the sequential sampler w.r.t. x_T / the network's parameters",
        f"seconds: jitted, after compilation, best of {args.repeats}; `lax`: JAX's own "
        "derivative of lax.conv_general_dilated, `deqir_jax`: the CPU rule of "
        "deqir_jax.models.layers.conv2d (same forward value)",
    ]) + table(rows, fmt) + ["", "Speed-up of the deqir_jax derivative over lax's: " + ", ".join(
        f"{k} {v:.1f}×" for k, v in speed.items()), ""]
    Path(args.out + ".md").write_text("\n".join(lines))
    write_csv(args.out + ".csv", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
