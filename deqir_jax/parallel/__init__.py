"""Sharding the DEQ trajectory over devices (``jax.sharding``): timesteps, and images.

The trajectory X (B, T, H, W, C) is split along T over the mesh axis ``"t"``: each device
holds T/n rows, evaluates the network on them, and exchanges only single images with its
neighbours (the row shift and the cross-shard prefix-scan carry, via ``ppermute``). A mesh
with a second axis ``"b"`` (``make_mesh(n, batch=nb)``) also splits the images (data parallel
× DeqIR's parallel over timesteps); images never talk to each other. The map runs inside
``jax.shard_map``; the solver around it is ordinary jitted code whose per-row work stays local
and whose norms become small all-reduces.

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

AXIS = "t"
BATCH = "b"


def make_mesh(devices=None, axis_name: str = AXIS, *, batch: int = 1) -> Mesh:
    """A mesh over ``devices``: a list, a count (the first n devices) or None (all devices of
    all hosts). ``batch=1``: 1-D, the timestep axis ``axis_name`` over all of them.
    ``batch=nb``: 2-D ``(nb, n/nb)`` with axes ``("b", axis_name)``: images split nb ways,
    timesteps n/nb ways."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        if not 1 <= devices <= len(jax.devices()):
            raise ValueError(f"devices must be in [1, {len(jax.devices())}], got {devices}")
        devices = jax.devices()[:devices]
    devices = list(devices)
    n = len(devices)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1 or n % batch:
        raise ValueError(f"batch must be a positive divisor of the {n} devices, got {batch!r}")
    auto = jax.sharding.AxisType.Auto
    if batch == 1:
        return jax.make_mesh((n,), (axis_name,), devices=devices, axis_types=(auto,))
    return jax.make_mesh((batch, n // batch), (BATCH, axis_name), devices=devices,
                         axis_types=(auto, auto))


def batch_axis(mesh: Mesh) -> str | None:
    """``"b"`` when ``mesh`` splits the images, else None."""
    return BATCH if BATCH in mesh.axis_names else None


def initialize_distributed(**kwargs) -> None:
    """Start multi-host JAX (``jax.distributed.initialize(**kwargs)``: coordinator_address,
    num_processes, process_id, or auto-detection on TPU pods / SLURM)."""
    jax.distributed.initialize(**kwargs)


def problem_specs(problem: Problem, axis_name: str = AXIS, batch: str | None = None):
    """PartitionSpecs for a Problem: coefficients and fresh noises split along T; x_T, y and
    the noises split along the images over ``batch`` (a mesh axis, or None); the rest
    replicated."""
    rep = lambda tree: jax.tree_util.tree_map(lambda _: P(), tree)
    fresh = problem.noise.shape[1] > 1
    coeffs = jax.tree_util.tree_map(lambda _: P(axis_name), problem.coeffs)
    return dataclasses.replace(
        problem,
        params=rep(problem.params),
        x_T=P(batch),
        y=jax.tree_util.tree_map(lambda _: P(batch), problem.y),
        noise=P(batch, axis_name) if fresh else P(batch),
        coeffs=coeffs,
        op=rep(problem.op),
    )


@dataclasses.dataclass(frozen=True)
class ShardedDEQMap:
    """``local`` (a :class:`DEQMap`) with its timestep rows split over ``mesh``: each device
    runs ``local`` on its block of rows (hashable, a static jit arg). ``local.axis_name``
    names the mesh axis of the rows; a map without one gets :data:`AXIS`."""

    local: DEQMap
    mesh: Mesh

    def __post_init__(self):
        if not isinstance(self.local, DEQMap):
            raise TypeError(f"ShardedDEQMap shards a DEQMap, got {type(self.local).__name__}")
        if self.local.axis_name is None:
            object.__setattr__(self, "local", dataclasses.replace(self.local, axis_name=AXIS))

    @property
    def axis_name(self) -> str:
        return self.local.axis_name

    def __call__(self, X, problem: Problem):
        check_mesh(self.mesh, X.shape[0], X.shape[1], self.axis_name)
        b = batch_axis(self.mesh)
        spec = P(b, self.axis_name)
        fn = jax.shard_map(
            self.local,
            mesh=self.mesh,
            in_specs=(spec, problem_specs(problem, self.axis_name, b)),
            out_specs=spec,
            check_vma=False,
        )
        return fn(X, problem)


def check_mesh(mesh: Mesh, images: int, timesteps: int | None,
               axis_name: str = AXIS) -> None:
    """ValueError unless the mesh's axes divide the images and the timesteps; with
    ``timesteps=None`` (the sequential sampler, data parallel) the images are split over every
    device of the mesh."""
    if timesteps is None:
        if images % mesh.size:
            raise ValueError(f"method='sequential' on a mesh splits the images over its "
                             f"{mesh.size} devices: the batch of {images} images must be "
                             "divisible by that")
        return
    n = mesh.shape[axis_name]
    if timesteps % n:
        raise ValueError(f"timesteps T={timesteps} must be divisible by the {n} devices of "
                         f"mesh axis {axis_name!r}")
    b = batch_axis(mesh)
    if b is not None and images % mesh.shape[b]:
        raise ValueError(f"the batch of {images} images must be divisible by the "
                         f"{mesh.shape[b]} devices of mesh axis {b!r}")


def place_problem(problem: Problem, mesh: Mesh, images=None) -> Problem:
    """Put a Problem's arrays on ``mesh``: the per-image ones (x_T, y, the noises) split along
    the images over the mesh axis or axes ``images`` (None: replicated), everything else
    replicated. (Host numpy leaves are left to jit: the same constants on every process;
    params restored from a checkpoint are committed to one device and get replicated.)"""
    put = lambda spec: lambda a: (jax.device_put(a, NamedSharding(mesh, spec))
                                  if isinstance(a, jax.Array) else a)
    rep = lambda tree: jax.tree_util.tree_map(put(P()), tree)
    per_image = lambda tree: jax.tree_util.tree_map(put(P(images)), tree)
    return dataclasses.replace(problem, params=rep(problem.params), x_T=per_image(problem.x_T),
                               y=per_image(problem.y), noise=per_image(problem.noise),
                               coeffs=rep(problem.coeffs), op=rep(problem.op))


def trajectory_sharding(mesh: Mesh, axis_name: str = AXIS) -> NamedSharding:
    """The sharding of a (B, T, H, W, C) trajectory: split along T, and along B when the mesh
    has a batch axis."""
    return NamedSharding(mesh, P(batch_axis(mesh), axis_name))


def shard_trajectory(X: jax.Array, mesh: Mesh, axis_name: str = AXIS) -> jax.Array:
    """Place X on ``mesh`` split along its timestep axis."""
    return jax.device_put(jnp.asarray(X), trajectory_sharding(mesh, axis_name))


__all__ = [
    "AXIS",
    "BATCH",
    "batch_axis",
    "check_mesh",
    "ShardedDEQMap",
    "initialize_distributed",
    "make_mesh",
    "place_problem",
    "problem_specs",
    "shard_trajectory",
    "trajectory_sharding",
]
