"""Diffusion UNets (ADM of guided-diffusion, DDPM of ermongroup/ddim) as pure JAX functions.

Public API::

    model = dq.models.create(dq.models.PRESETS["adm-tiny-golden"], key=0)
    out = model.eps_fn(model.params, x, t)        # (B, H, W, out_channels), x NHWC in [-1, 1]
    eps = model.eps(model.params, x, t)           # first in_channels channels
    dq.models.save(model, "ckpt_dir")             # config.json + orbax params
    model = dq.models.load("ckpt_dir")            # also what weights_convert writes
    n = dq.models.count_params(config)            # via jax.eval_shape, no weights

``attention_resolutions`` (ADM) and ``attn_resolutions`` (DDPM) are in pixels at
``image_size``/``resolution``; internally attention sits at downsample factors, so the networks
run on any H, W that are multiples of ``config.size_multiple``.
"""

from .checkpoint import load, read_config, save
from .configs import (
    ARCHITECTURES,
    PRESETS,
    ADMConfig,
    Config,
    DDPMConfig,
    config_from_dict,
    config_to_dict,
    get_preset,
    replace_fields,
)
from .default import default, default_model_path
from .model import (
    Model,
    abstract_params,
    check_params,
    count_params,
    create,
    dtype_name,
    from_params,
    make_eps_fn,
)

__all__ = [
    "default",
    "default_model_path",
    "ARCHITECTURES",
    "ADMConfig",
    "Config",
    "DDPMConfig",
    "Model",
    "PRESETS",
    "abstract_params",
    "check_params",
    "config_from_dict",
    "config_to_dict",
    "count_params",
    "create",
    "dtype_name",
    "from_params",
    "get_preset",
    "load",
    "make_eps_fn",
    "read_config",
    "replace_fields",
    "save",
]
