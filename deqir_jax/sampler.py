"""The sampler's settings as one value: :class:`Sampler` (a leaf module: models store it with
their checkpoints without depending on the samplers).

``dq.restore``, ``make_problem``, ``optimize_init`` and the CLI all take the same value (or
its fields as keyword overrides), and a model checkpoint can carry its recommended one
(``config.json`` → ``"sampler"``), which :func:`sampler_for` uses when the caller does not
override it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import schedules


class SettingError(ValueError):
    """A sampler setting out of range: ``field`` names it, ``detail`` says what is wrong
    (the message is ``"<field> <detail>"``)."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field} {detail}")
        self.field, self.detail = field, detail


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How the DDNM/DeqIR chain samples (hashable; static under ``jax.jit``).

    Attributes:
        timesteps: T sampling steps (1..1000).
        nw, etw: DeqIR's noise and ε weights in [0, 1] (official example: nw 0, etw 0.1;
            ``nw = etw = 1`` with ``fresh_noise`` is DDNM's η = 1).
        sigma_y: measurement noise std in [0, 1] pixel units (used by ``noise_aware``).
        noise_aware: the DDNM+ correction for noisy y.
        fresh_noise: a new noise z per step (standard DDNM) instead of one shared z (official).
        schedule: ``"linear"`` (official) or ``"cosine"`` β schedule.
        skip_type: ``"uniform"`` (official) or ``"quad"`` timestep spacing.
        ccdf: run only the last ``ccdf`` of the T steps, from A⁺y diffused to that time
            (CCDF, Chung et al. 2022); None: all T steps from x_T.
        samples: K posterior samples per image; the restored image is their mean.
    """

    timesteps: int = 25
    nw: float = 0.0
    etw: float = 0.0
    sigma_y: float = 0.0
    noise_aware: bool = False
    fresh_noise: bool = False
    schedule: str = "linear"
    skip_type: str = "uniform"
    ccdf: int | None = None
    samples: int = 1

    def __post_init__(self):
        def integer(name, value, lo, hi=None):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
                    hi is not None and value > hi):
                rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise SettingError(name, f"must be an integer {rng}, got {value!r}")

        integer("timesteps", self.timesteps, 1, schedules.NUM_TRAIN_STEPS)
        integer("samples", self.samples, 1)
        if self.ccdf is not None:
            integer("ccdf", self.ccdf, 1, self.timesteps)
        for name in ("noise_aware", "fresh_noise"):
            if not isinstance(getattr(self, name), bool):
                raise SettingError(name, f"must be True or False, got {getattr(self, name)!r}")
        for name in ("nw", "etw", "sigma_y"):  # plain floats: hashable, JSON-able
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingError(name, f"must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("nw", "etw"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingError(name, f"must be a finite number in [0, 1], got "
                                         f"{getattr(self, name)}")
        if not 0.0 <= self.sigma_y < float("inf"):
            raise SettingError("sigma_y", f"must be a finite number >= 0, got {self.sigma_y}")
        if self.schedule not in schedules.SCHEDULES:
            raise SettingError("schedule", f"must be one of {schedules.SCHEDULES}, got "
                                           f"{self.schedule!r}")
        if self.skip_type not in schedules.SKIP_TYPES:
            raise SettingError("skip_type", f"must be one of {schedules.SKIP_TYPES}, got "
                                            f"{self.skip_type!r}")

    @classmethod
    def official(cls, **overrides: Any) -> Sampler:
        """The official DeqIR example's settings (T = 25, etw 0.1, nw 0, one shared noise)."""
        return cls(**{"etw": 0.1, "nw": 0.0, **overrides})

    @property
    def steps(self) -> int:
        """Rows that run: ``ccdf`` if set, else T."""
        return self.timesteps if self.ccdf is None else self.ccdf

    def coefficients(self):
        """The T steps' :class:`~deqir_jax.diffusion.StepCoefficients` (all T, also with
        ``ccdf``; see :func:`~deqir_jax.diffusion.ccdf_problem`)."""
        from .diffusion.coefficients import step_coefficients

        return step_coefficients(
            self.timesteps, nw=self.nw, etw=self.etw, sigma_y=self.sigma_y,
            noise_aware=self.noise_aware, schedule=self.schedule, skip_type=self.skip_type)

    def replace(self, **changes: Any) -> Sampler:
        """A copy with ``changes``; a TypeError names any key that is not a field."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown sampler setting(s) {unknown}; the settings are {FIELDS}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sampler:
        """The inverse of :meth:`to_dict` (missing keys take the defaults)."""
        if not isinstance(data, dict):
            raise ValueError(f"sampler settings must be a JSON object, got {type(data).__name__}")
        return cls().replace(**data)

    def describe(self) -> str:
        """One line for logs: T, the weights and the noise always; the other settings only
        where they differ from the defaults."""
        noise = "fresh noise per step" if self.fresh_noise else "one shared noise"
        parts = [f"T={self.timesteps}", f"etw={self.etw:g}", f"nw={self.nw:g}", noise]
        if self.ccdf is not None:
            parts.append(f"ccdf={self.ccdf}")
        if self.samples > 1:
            parts.append(f"samples={self.samples}")
        if self.noise_aware:
            parts.append(f"noise-aware sigma_y={self.sigma_y:g}")
        if (self.schedule, self.skip_type) != ("linear", "uniform"):
            parts.append(f"schedule={self.schedule} skip={self.skip_type}")
        return ", ".join(parts)


FIELDS = tuple(f.name for f in dataclasses.fields(Sampler))


def split_settings(options: dict) -> tuple[dict, dict]:
    """``options`` split into (sampler fields, the rest)."""
    settings = {k: v for k, v in options.items() if k in FIELDS}
    return settings, {k: v for k, v in options.items() if k not in FIELDS}


def sampler_for(model: Any, sampler: Sampler | None = None, **overrides: Any) -> Sampler:
    """The settings a call uses: ``sampler`` if given, else the model's recommended settings
    (``model.sampler``, stored with its checkpoint), else :class:`Sampler` (); then
    ``overrides`` (an explicit ``ccdf=None`` switches a recommended CCDF start off)."""
    if sampler is None:
        stored = getattr(model, "sampler", None)
        sampler = Sampler() if stored is None else (
            stored if isinstance(stored, Sampler) else Sampler.from_dict(stored))
    elif not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a dq.Sampler, got {type(sampler).__name__}")
    return sampler.replace(**overrides)
