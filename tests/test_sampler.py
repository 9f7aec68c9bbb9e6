"""The sampler's settings as one value (``dq.Sampler``) and the settings a model carries with
its checkpoint: validation, save/load round trip, and their use by ``dq.restore`` unless the
caller overrides them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqir_jax as dq
from deqir_jax import models
from deqir_jax.diffusion import sampler_for
from deqir_jax.sampler import SettingError

TINY = models.ADMConfig(
    image_size=16, model_channels=32, out_channels=6, num_res_blocks=1,
    attention_resolutions=(), channel_mult=(1, 2), num_heads=1, num_head_channels=-1,
    resblock_updown=False)
STORED = dq.Sampler(timesteps=5, etw=0.3, nw=0.2, fresh_noise=True)


@pytest.fixture(scope="module")
def tiny():
    return models.create(TINY, key=0)


@pytest.mark.parametrize("bad, field, match", [
    (dict(timesteps=0), "timesteps", r"timesteps must be an integer in \[1, 1000\], got 0"),
    (dict(timesteps=2.5), "timesteps", "timesteps must be an integer"),
    (dict(etw=1.5), "etw", r"etw must be a finite number in \[0, 1\]"),
    (dict(ccdf=9, timesteps=8), "ccdf", r"ccdf must be an integer in \[1, 8\], got 9"),
    (dict(samples=0), "samples", "samples must be an integer >= 1"),
    (dict(schedule="quadratic"), "schedule", "quadratic"),
    (dict(fresh_noise="yes"), "fresh_noise", "fresh_noise must be True or False"),
])
def test_sampler_validates(bad, field, match):
    with pytest.raises(ValueError, match=match) as info:
        dq.Sampler(**bad)
    # the error names its field (the CLI maps it to the flag without parsing the message)
    assert isinstance(info.value, SettingError) and info.value.field == field
    assert str(info.value) == f"{field} {info.value.detail}"


def test_sampler_replace_dict_round_trip():
    s = dq.Sampler.official(samples=4)
    assert (s.etw, s.nw, s.timesteps, s.samples) == (0.1, 0.0, 25, 4)
    assert dq.Sampler.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.replace(ccdf=10).steps == 10 and s.steps == 25
    with pytest.raises(TypeError, match=r"unknown sampler setting\(s\) \['eta'\]"):
        s.replace(eta=1.0)
    assert hash(s) == hash(dq.Sampler.official(samples=4))  # static under jit


def test_settings_round_trip_through_save_and_load(tiny, tmp_path):
    models.save(tiny.replace(sampler=STORED), tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["sampler"]["etw"] == 0.3
    loaded = models.load(tmp_path / "m")
    assert loaded.sampler == STORED
    models.save(tiny, tmp_path / "plain")  # no settings stored: None, library defaults
    assert models.load(tmp_path / "plain").sampler is None
    assert sampler_for(models.load(tmp_path / "plain")) == dq.Sampler()


def test_corrupt_settings_name_the_file(tiny, tmp_path):
    models.save(tiny, tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    data = json.loads(cfg.read_text())
    data["sampler"] = {"etw": 2.0}
    cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config.json 'sampler': invalid sampler settings "
                                         r"\(etw must be"):
        models.load(tmp_path / "m")
    data["sampler"] = {"eta": 1.0}
    cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown sampler setting"):
        models.load(tmp_path / "m")


def test_restore_uses_the_models_settings_unless_overridden(tiny):
    """A model's stored settings are what ``dq.restore`` runs without arguments; a keyword or
    an explicit ``sampler`` overrides them; ``stats["sampler"]`` says what ran."""
    op = dq.operators.get("sr_bicubic", image_shape=(16, 16, 3), scale=2)
    y = op.A(jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32))
    with_settings = tiny.replace(sampler=STORED)
    run = lambda m, **kw: dq.restore(m, y, op, method="sequential", key=0, **kw)
    res = run(with_settings)
    assert res.stats["sampler"] == STORED and res.stats["nfe"] == 5
    np.testing.assert_array_equal(res.image, run(tiny, sampler=STORED).image)
    np.testing.assert_array_equal(
        res.image, run(tiny, timesteps=5, etw=0.3, nw=0.2, fresh_noise=True).image)
    over = run(with_settings, etw=0.0, nw=0.0, fresh_noise=False)
    assert over.stats["sampler"] == dq.Sampler(timesteps=5)
    np.testing.assert_array_equal(over.image, run(tiny, timesteps=5).image)
    assert run(with_settings, sampler=dq.Sampler(timesteps=3)).stats["nfe"] == 3
    ccdf = tiny.replace(sampler=dq.Sampler(timesteps=5, ccdf=2))
    assert run(ccdf).stats["nfe"] == 2  # the recommended CCDF start ...
    assert run(ccdf, ccdf=None).stats["nfe"] == 5  # ... and an explicit None switches it off
    with pytest.raises(TypeError, match="solver options"):
        run(tiny, eta=1.0)


def test_models_are_pytrees(tiny):
    """A Model (params the only child; config, network function, dtype and settings static)
    goes into jax.jit as an argument and jax.grad differentiates with respect to it."""
    op = dq.operators.get("sr_bicubic", image_shape=(16, 16, 3), scale=2)
    y = op.A(jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32))
    m = tiny.replace(sampler=dq.Sampler(timesteps=3))
    run = lambda model: dq.restore(model, y, op, method="sequential", key=0).image
    np.testing.assert_allclose(np.asarray(jax.jit(run)(m)), np.asarray(run(m)), rtol=1e-5,
                               atol=1e-5)  # float32: XLA may order sums differently
    g = jax.grad(lambda model: jnp.sum(run(model)))(m)
    assert isinstance(g, models.Model) and g.sampler == m.sampler
    ref = jax.grad(lambda p: jnp.sum(run(m.replace(params=p))))(m.params)
    for a, b in zip(jax.tree_util.tree_leaves(g.params), jax.tree_util.tree_leaves(ref),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
