"""Train state, optimizer and the jitted DDPM training step.

Loss (Ho et al. 2020, eq. 14, "L_simple")::

    t ~ U{0, ..., 999},  ε ~ N(0, I),  x_t = √ā_t x_0 + √(1 − ā_t) ε
    L = mean w_t ‖ε − ε_θ(x_t, t)[..., :C]‖²

with ``w_t = 1`` (``loss_weight="eps"``) or ``w_t = 1/ā_t`` (``"v"``: the v-prediction loss
of an ε-network: with v = √ā ε − √(1−ā) x_0, ‖v − v_θ‖² = ‖ε − ε_θ‖²/ā_t =
‖x_0 − x̂_0‖²/(1−ā_t), so large t are trained on their x0 error, which L_simple weights by
SNR_t ≈ 0).
with the linear β schedule (1e-4 → 0.02) that the samplers use. A ``learn_sigma`` network is
trained on its ε channels only. AdamW with linear warm-up (then cosine or constant), global
norm clipping and an EMA of the params (the EMA is what gets exported).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..models import create, load, make_eps_fn, replace_fields
from ..schedules import NUM_TRAIN_STEPS, alphas_cumprod, linear_betas
from .config import TrainConfig

# Parameter groups that ADM initialises to zero (``zero_module``): the last conv of each
# residual block, the attention output projection and the network's output conv.
_ZERO_INIT = ("out_conv", "proj_out", "final_conv")


def lr_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay or constant."""
    warm = config.warmup_steps
    if config.lr_schedule == "constant":
        after = optax.constant_schedule(config.lr)
    else:
        after = optax.cosine_decay_schedule(
            config.lr, max(config.steps - warm, 1), alpha=config.min_lr_ratio)
    if warm == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(config.lr / warm, config.lr, warm), after], [warm])


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW(lr schedule, β = (0.9, 0.999), weight decay)."""
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(config), b1=0.9, b2=0.999, eps=1e-8,
                             weight_decay=config.weight_decay))
    return optax.chain(*parts)


def _zero_init(params: dict) -> dict:
    def leaf(path, v):
        names = {getattr(k, "key", None) for k in path}
        return jnp.zeros_like(v) if names & set(_ZERO_INIT) else v
    return jax.tree_util.tree_map_with_path(leaf, params)


def _init_params(config: TrainConfig) -> dict:
    model = load(config.init_from)
    # the output parameterisation may change (an ε-network fine-tuned into a v-network)
    if replace_fields(model.config, prediction=config.model.prediction) != config.model:
        raise ValueError(
            f"init_from: {config.init_from} holds a {model.config}, which differs from the "
            f"run's model {config.model}; train with the checkpoint's architecture"
        )
    return model.params


def init_state(config: TrainConfig) -> dict[str, Any]:
    """A fresh train state: ``{"step", "params", "ema", "opt_state", "rng"}``.

    ``rng`` is raw uint32 key data (``jax.random.key_data``) so that the state is a plain
    array pytree that orbax stores as is.
    """
    if config.init_from is not None:
        params = _init_params(config)
    else:
        params = create(config.model, key=config.seed).params
        if config.zero_init:
            params = _zero_init(params)
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "opt_state": optimizer(config).init(params),
        "rng": jax.random.key_data(jax.random.key(config.seed + 1)),
    }


def state_template(config: TrainConfig) -> dict[str, Any]:
    """Shapes and dtypes of :func:`init_state` (``jax.ShapeDtypeStruct`` leaves), without
    computing or reading any params (``init_from`` is a file read, not traceable)."""
    return jax.eval_shape(lambda: init_state(config.replace(init_from=None)))


def _ddpm_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    abar = alphas_cumprod(linear_betas(NUM_TRAIN_STEPS))
    return tuple(np.asarray(a, np.float32) for a in (np.sqrt(abar), np.sqrt(1.0 - abar), abar))


def ddpm_loss(eps_fn, params: Any, x0: jax.Array, t: jax.Array, noise: jax.Array,
              loss_weight: str = "eps") -> jax.Array:
    """``mean(w_t (ε − ε_θ(√ā_t x0 + √(1 − ā_t) ε, t)[..., :C])²)`` (float32 scalar);
    ``w_t`` = 1 (``"eps"``) or 1/ā_t (``"v"``)."""
    sa, s1a, abar = (jnp.asarray(a) for a in _ddpm_tables())
    xt = sa[t][:, None, None, None] * x0 + s1a[t][:, None, None, None] * noise
    out = eps_fn(params, xt, t)[..., : x0.shape[-1]]
    err = jnp.mean(jnp.square(out.astype(jnp.float32) - noise), axis=(1, 2, 3))
    w = 1.0 / abar[t] if loss_weight == "v" else jnp.ones_like(err)
    return jnp.mean(w * err)


def make_train_step(config: TrainConfig):
    """The jitted ``step(state, x0) -> (state, metrics)`` for ``config`` (state donated).

    ``x0``: (B, H, W, C) float32 images in [-1, 1]. Timesteps and noise come from the state's
    rng (split once per step). ``metrics``: ``loss``, ``grad_norm`` (before clipping) and
    ``lr`` of this step.
    """
    # Only the maths fields matter: runs that differ in paths/logging share one compiled step.
    return _make_train_step(config.replace(
        data=("-",), run_dir="-", export=None, init_from=None, resume=False, overwrite=False,
        checkpoint_every=1, keep_checkpoints=1, log_every=1, scales=(1.0,)))


@functools.lru_cache(maxsize=8)
def _make_train_step(config: TrainConfig):
    eps_fn = make_eps_fn(config.model)
    tx = optimizer(config)
    sched = lr_schedule(config)

    def step(state, x0):
        rng, k_t, k_n = jax.random.split(jax.random.wrap_key_data(state["rng"]), 3)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, NUM_TRAIN_STEPS, dtype=jnp.int32)
        noise = jax.random.normal(k_n, x0.shape, jnp.float32)
        loss, grads = jax.value_and_grad(
            functools.partial(ddpm_loss, eps_fn, loss_weight=config.loss_weight))(
            state["params"], x0, t, noise)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        n = state["step"].astype(jnp.float32)
        decay = jnp.float32(config.ema_decay)
        if config.ema_warmup:
            decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state["ema"], params)
        new = {"step": state["step"] + 1, "params": params, "ema": ema,
               "opt_state": opt_state, "rng": jax.random.key_data(rng)}
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": jnp.asarray(sched(state["step"]), jnp.float32)}
        return new, metrics

    return jax.jit(step, donate_argnums=0)
