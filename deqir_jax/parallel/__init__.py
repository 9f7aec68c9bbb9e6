"""Sharding the timestep axis of the DEQ trajectory over devices (``jax.sharding``).

The trajectory X (B, T, H, W, C) is split along T over a 1-D mesh axis ``"t"``: each device
holds T/n rows, evaluates the network on them, and exchanges only single images with its
neighbours (the row shift and the cross-shard prefix-scan carry, via ``ppermute``). The map
runs inside ``jax.shard_map``; the solver around it is ordinary jitted code whose per-row work
stays local and whose norms become small all-reduces.

Several hosts: call :func:`initialize_distributed` (``jax.distributed.initialize``) on every
host first; ``jax.devices()`` then lists all hosts' devices and :func:`make_mesh` spans them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..diffusion import DEQMap, Problem
from ..diffusion.deq_map import check_order

AXIS = "t"


def make_mesh(devices=None, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over ``devices``: a list, a count (the first n devices) or None (all
    devices of all hosts)."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        if not 1 <= devices <= len(jax.devices()):
            raise ValueError(f"devices must be in [1, {len(jax.devices())}], got {devices}")
        devices = jax.devices()[:devices]
    devices = list(devices)
    return jax.make_mesh(
        (len(devices),), (axis_name,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )


def initialize_distributed(**kwargs) -> None:
    """Start multi-host JAX (``jax.distributed.initialize(**kwargs)``: coordinator_address,
    num_processes, process_id, or auto-detection on TPU pods / SLURM)."""
    jax.distributed.initialize(**kwargs)


def problem_specs(problem: Problem, axis_name: str = AXIS):
    """PartitionSpecs for a Problem: coefficients and fresh noises split along T, the rest
    replicated."""
    rep = lambda tree: jax.tree_util.tree_map(lambda _: P(), tree)
    fresh = problem.noise.shape[1] > 1
    coeffs = jax.tree_util.tree_map(lambda _: P(axis_name), problem.coeffs)
    return dataclasses.replace(
        problem,
        params=rep(problem.params),
        x_T=P(),
        y=rep(problem.y),
        noise=P(None, axis_name) if fresh else P(),
        coeffs=coeffs,
        op=rep(problem.op),
    )


@dataclasses.dataclass(frozen=True)
class ShardedDEQMap:
    """The DEQ map with its timestep rows split over ``mesh`` (hashable, a static jit arg)."""

    eps_fn: object
    mesh: Mesh
    chunk_size: int | None = None
    axis_name: str = AXIS
    order: int | None = None

    def __post_init__(self):
        check_order(self.order)

    def __call__(self, X, problem: Problem):
        n = self.mesh.shape[self.axis_name]
        T = X.shape[1]
        if T % n:
            raise ValueError(
                f"timesteps T={T} must be divisible by the number of devices on mesh axis "
                f"{self.axis_name!r} ({n})"
            )
        local = DEQMap(self.eps_fn, chunk_size=self.chunk_size, axis_name=self.axis_name,
                       order=self.order)
        spec = P(None, self.axis_name)
        fn = jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(spec, problem_specs(problem, self.axis_name)),
            out_specs=spec,
            check_vma=False,
        )
        return fn(X, problem)


def trajectory_sharding(mesh: Mesh, axis_name: str = AXIS) -> NamedSharding:
    """The sharding of a (B, T, H, W, C) trajectory split along T."""
    return NamedSharding(mesh, P(None, axis_name))


def shard_trajectory(X: jax.Array, mesh: Mesh, axis_name: str = AXIS) -> jax.Array:
    """Place X on ``mesh`` split along its timestep axis."""
    return jax.device_put(jnp.asarray(X), trajectory_sharding(mesh, axis_name))


__all__ = [
    "AXIS",
    "ShardedDEQMap",
    "initialize_distributed",
    "make_mesh",
    "problem_specs",
    "shard_trajectory",
    "trajectory_sharding",
]
