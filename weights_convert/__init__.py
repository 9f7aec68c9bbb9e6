"""Convert PyTorch / safetensors diffusion UNet checkpoints into ``deqir_jax`` models.

Command line::

    python -m weights_convert SRC DST [--preset NAME] [--dtype float32|bfloat16] [--key K]
                              [--set field=value ...] [--overwrite]

Python::

    weights_convert.convert("256x256_diffusion_uncond.pt", "adm256")   # -> ConvertResult
    sd = weights_convert.load_torch_state_dict("model.pt")             # {name: numpy array}

Files are read with numpy only: torch is not needed and no code from the file is executed
(a restricted unpickler refuses every global except those that rebuild tensors).
"""

from .convert import (
    ConversionError,
    ConvertResult,
    check_state_dict,
    convert,
    convert_state_dict,
    params_from_state_dict,
)
from .infer import detect_architecture, resolve_config
from .sources import load_torch_state_dict, open_state_dict, pick_state_dict
from .tensors import CheckpointError
from .torch_pickle import UnsafeCheckpointError

__all__ = [
    "CheckpointError",
    "ConversionError",
    "ConvertResult",
    "UnsafeCheckpointError",
    "check_state_dict",
    "convert",
    "convert_state_dict",
    "detect_architecture",
    "load_torch_state_dict",
    "open_state_dict",
    "params_from_state_dict",
    "pick_state_dict",
    "resolve_config",
]
