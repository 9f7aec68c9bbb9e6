"""Training of the diffusion prior: loss, resume = uninterrupted run, data errors, CLI, and
the shipped default model. Kept small (one tiny network compiled once) so it runs in seconds."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from deqir_jax import train as dqt
from deqir_jax.models import ADMConfig, load, replace_fields

# One level (no resampling), middle attention only: the smallest ADM that still exercises
# every block type of the loss and the optimizer. Compiled once for all tests below.
TINY = ADMConfig(image_size=16, model_channels=32, out_channels=3, num_res_blocks=1,
                 attention_resolutions=(), channel_mult=(1,), num_heads=1,
                 num_head_channels=32)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Four smooth random RGB images of different sizes (one smaller than the crop)."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (33, 20), (64, 48), (12, 30)]):
        base = rng.random((h // 4 + 1, w // 4 + 1, 3))
        img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
        Image.fromarray((img * 255).astype(np.uint8)).save(d / f"img_{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _config(image_dir, run_dir, **kw):
    base = dict(data=(str(image_dir),), run_dir=str(run_dir), model=TINY, crop_size=16,
                batch_size=2, steps=4, lr=1e-3, warmup_steps=1, checkpoint_every=100,
                log_every=1)
    return dqt.TrainConfig(**{**base, **kw})


def test_crops_deterministic_in_range_and_flipped(image_dir):
    data = dqt.ImageCrops([image_dir], crop_size=16, scales=(1.0, 0.5))
    assert data.num_files == 4 and len(data) == 8
    assert all(min(im.shape[:2]) >= 16 for im in data.images)  # small images upscaled
    a, b = data.batch(3, 7, 5), data.batch(3, 7, 5)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # the batch of a step is a function of (seed, step)
    assert not np.array_equal(a, data.batch(3, 8, 5))
    assert a.min() >= -1.0 and a.max() <= 1.0


def test_loss_finite_and_decreasing_on_a_repeated_batch(image_dir, tmp_path):
    cfg = _config(image_dir, tmp_path / "run")  # same maths as below: one compiled step
    state = dqt.init_state(cfg)
    rng0 = np.asarray(state["rng"])  # a copy: the step donates the state buffers
    step = dqt.make_train_step(cfg)
    x0 = jnp.asarray(dqt.ImageCrops(cfg.data, 16).batch(0, 0, 2))
    losses = []
    for _ in range(6):
        state = {**state, "rng": rng0}  # same t and noise every step: a fixed objective
        state, m = step(state, x0)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    assert int(state["step"]) == 6
    # Adam on a fixed batch (lr 1e-3 after one warm-up step): the objective goes down clearly.
    assert losses[-1] < 0.9 * losses[0], losses


def test_resume_gives_the_same_state_as_an_uninterrupted_run(image_dir, tmp_path):
    full = dqt.train(_config(image_dir, tmp_path / "full", export=str(tmp_path / "export")),
                     progress=False)
    assert full.completed and full.step == 4 and np.all(np.isfinite(full.losses))
    part = dqt.train(_config(image_dir, tmp_path / "split"), stop_at=2, progress=False)
    assert not part.completed and part.step == 2
    with pytest.raises(ValueError, match="already has checkpoints"):
        dqt.train(_config(image_dir, tmp_path / "split"), progress=False)
    with pytest.raises(ValueError, match="different settings for lr"):
        dqt.train(_config(image_dir, tmp_path / "split", resume=True, lr=5e-4), progress=False)
    rest = dqt.train(_config(image_dir, tmp_path / "split", resume=True), progress=False)
    assert rest.completed and rest.step == 4
    # Same compiled step on the same inputs: identical in practice; the tolerance only allows
    # for a reordered float reduction in XLA's multi-threaded CPU kernels.
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(rest.state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    np.testing.assert_allclose(full.losses[2:], rest.losses, rtol=0, atol=1e-6)
    with open(tmp_path / "split" / "loss.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4]
    # A finished cosine run only continues with a new length when asked (warm restart); the
    # check alone (a new length would compile a new step, too slow for this file).
    longer = dqt.RunDir(_config(image_dir, tmp_path / "split", resume=True, steps=8))
    saved = _config(image_dir, tmp_path / "split").to_dict()
    with pytest.raises(ValueError, match="steps"):
        longer.check_resumable(saved)
    longer.check_resumable(saved, extend=True)
    # The export is the EMA params as a regular model checkpoint.
    model = load(tmp_path / "export")
    assert model.config == TINY
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(full.state["ema"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_v_loss_weights_each_sample_by_one_over_alpha_bar():
    # A stand-in network eps = w * x_t, so the per-sample errors are known in closed form.
    eps_fn = lambda w, x, t: w * x
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 3)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal((3, 4, 4, 3)), jnp.float32)
    t = jnp.asarray([0, 500, 999])
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[np.asarray(t)]  # DDPM's schedule
    xt = (np.sqrt(abar)[:, None, None, None] * np.asarray(x0)
          + np.sqrt(1 - abar)[:, None, None, None] * np.asarray(noise))
    per = ((0.7 * xt - np.asarray(noise)) ** 2).mean(axis=(1, 2, 3))
    eps_loss = dqt.ddpm_loss(eps_fn, 0.7, x0, t, noise)
    v_loss = dqt.ddpm_loss(eps_fn, 0.7, x0, t, noise, loss_weight="v")
    np.testing.assert_allclose(float(eps_loss), per.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(v_loss), (per / abar).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="loss_weight must be one of"):
        dqt.TrainConfig(data=("x",), run_dir="r", loss_weight="x0")


def test_init_from_starts_params_and_ema_from_a_checkpoint(image_dir, tmp_path):
    from deqir_jax.models import create, save

    start = create(TINY, key=7)
    save(start, tmp_path / "start")
    res = dqt.train(_config(image_dir, tmp_path / "run", init_from=str(tmp_path / "start"),
                            steps=4), stop_at=1, progress=False)
    assert res.step == 1 and np.all(np.isfinite(res.losses))
    # one small Adam step away from the checkpoint's (random, not zero-initialised) params
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree.leaves(res.state["params"]), jax.tree.leaves(start.params), strict=True)]
    assert max(moved) < 5e-3 and max(moved) > 0
    state = dqt.init_state(_config(image_dir, tmp_path / "r2", init_from=str(tmp_path / "start")))
    for a, b, e in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(start.params),
                       jax.tree.leaves(state["ema"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(e), np.asarray(b))
    other = _config(image_dir, tmp_path / "r3", init_from=str(tmp_path / "start"),
                    model=replace_fields(TINY, model_channels=64))
    with pytest.raises(ValueError, match="init_from: .* differs from the run's model"):
        dqt.init_state(other)
    args = dqt.build_parser().parse_args(
        ["--data", str(image_dir), "--run-dir", str(tmp_path / "r4"), "--crop", "16",
         "--init-from", str(tmp_path / "start"), "--loss-weight", "v", "--prediction", "v"])
    cfg = dqt.config_from_args(args)
    assert cfg.model == replace_fields(TINY, prediction="v") and cfg.loss_weight == "v"
    # an ε checkpoint may start a v-network (same weights, other output parameterisation)
    v_state = dqt.init_state(cfg)
    for a, b in zip(jax.tree.leaves(v_state["params"]), jax.tree.leaves(start.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # architecture flags would be ignored with --init-from: refused, naming them
    args = dqt.build_parser().parse_args(
        ["--data", str(image_dir), "--run-dir", str(tmp_path / "r5"), "--crop", "16",
         "--init-from", str(tmp_path / "start"), "--model-channels", "64", "--learn-sigma"])
    with pytest.raises(ValueError, match="drop --model-channels, --learn-sigma"):
        dqt.config_from_args(args)


def test_resume_without_checkpoint_is_an_error(image_dir, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint found"):
        dqt.train(_config(image_dir, tmp_path / "none", resume=True), progress=False)


def test_missing_or_empty_data_folder_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="does not exist"):
        dqt.train(_config(tmp_path / "nope", run), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        dqt.train(_config(tmp_path / "empty", run), progress=False)
    assert not run.exists()  # nothing written before the data were checked


def test_config_validation(image_dir, tmp_path):
    with pytest.raises(ValueError, match="crop_size must be a multiple of 8"):
        _config(image_dir, tmp_path, model=dqt.DEFAULT_PRIOR_CONFIG, crop_size=20)
    with pytest.raises(ValueError, match="batch_size"):
        _config(image_dir, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="scales"):
        _config(image_dir, tmp_path, scales=(1.5,))
    cfg = _config(image_dir, tmp_path, scales=(1.0, 0.5))
    assert dqt.TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_arguments_and_errors(image_dir, tmp_path, capsys):
    args = dqt.build_parser().parse_args(
        ["--data", str(image_dir), "--run-dir", str(tmp_path / "r"), "--crop", "32",
         "--batch", "4", "--model-channels", "32", "--channel-mult", "1,2",
         "--num-head-channels", "32", "--scales", "1,0.5", "--learn-sigma"])
    cfg = dqt.config_from_args(args)
    assert cfg.model.channel_mult == (1, 2) and cfg.model.attention_ds == (2,)
    assert cfg.model.learn_sigma and cfg.scales == (1.0, 0.5) and cfg.crop_size == 32
    # defaults: a v-network like the shipped prior, trained on its natural (v-MSE) loss
    assert cfg.model.prediction == "v" and cfg.loss_weight == "v"
    assert dqt.TrainConfig(data=("x",), run_dir="r", model=TINY).loss_weight == "eps"
    code = dqt.main(["--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r")])
    assert code == 1 and "does not exist" in capsys.readouterr().err


def test_default_model_runs_at_a_non_square_size():
    from deqir_jax.models.default import default, default_model_path

    try:
        default_model_path()
    except FileNotFoundError as e:
        pytest.skip(f"default model asset not built yet: {e}")
    model = default()
    assert default() is model  # cached
    m = model.config.size_multiple
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 3 * m, 5 * m, 3)), jnp.float32)
    out = model.eps_fn(model.params, x, jnp.array([500]))
    assert out.shape == (1, 3 * m, 5 * m, model.out_channels)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_default_model_missing_asset_names_the_path(monkeypatch):
    import importlib

    # the module (``deqir_jax.models.default`` the attribute is the function)
    d = importlib.import_module("deqir_jax.models.default")
    monkeypatch.setattr(d, "DEFAULT_MODEL_RESOURCE", ("assets", "no_such_model"))
    d.default_model_path.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="no_such_model/config.json"):
            d.default_model_path()
    finally:
        d.default_model_path.cache_clear()
