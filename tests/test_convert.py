"""weights_convert: end-to-end parity, golden checkpoint, safe loading, clear errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import deqir_jax as dq
import deqir_jax.models as M
import weights_convert as wc
from weights_convert.infer import parse_value
from weights_convert.mapping import expected_keys
from weights_convert.sources import pick_state_dict, read_checkpoint, strip_prefixes

sys.path.insert(0, os.path.dirname(__file__))
from test_models_torchref import (  # noqa: E402
    fast_jit,
    randomize_,
    rel_err,
    torch,
    torch_forward,
    torch_model,
)

SHARED = Path(os.environ.get("DEQIR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN_PT = SHARED / "golden" / "adm_tiny.pt"
GOLDEN_NPZ = SHARED / "golden" / "deqir_official_tiny.npz"

TINY = M.PRESETS["adm-tiny-golden"]
ADM_COND = M.ADMConfig(image_size=32, model_channels=32, out_channels=6, num_res_blocks=1,
                       attention_resolutions=(16,), channel_mult=(1, 2), num_heads=2,
                       num_head_channels=-1, num_heads_upsample=4, use_scale_shift_norm=True,
                       resblock_updown=False, use_new_attention_order=True, num_classes=5)
DDPM_SMALL = M.DDPMConfig(resolution=32, ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1,
                          attn_resolutions=(16,), resamp_with_conv=True)


def _cli(*args, block_torch=False):
    """Run the converter CLI in a fresh interpreter; returns CompletedProcess."""
    if block_torch:  # prove that no torch is needed to read the checkpoint
        cmd = [sys.executable, "-c", "import sys; sys.modules['torch'] = None; "
               "from weights_convert.__main__ import main; sys.exit(main())", *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "weights_convert", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, 12, 20, cfg.in_channels)).astype(np.float32)
    t = np.array([7, 999])
    y = np.array([1, 4]) if getattr(cfg, "num_classes", None) else None
    return x, t, y


def _check_parity(tm, dst, cfg):
    model = M.load(dst)
    assert model.config == cfg
    x, t, y = _inputs(cfg)
    kw = {} if y is None else {"y": y}
    out = fast_jit(model.eps_fn)(model.params, x, t, **kw)
    assert rel_err(out, torch_forward(tm, x, t, y)) < 1e-5


def _tiny_state_dict(seed=0):
    return randomize_(torch_model(TINY), seed).state_dict()


@pytest.mark.slow
def test_cli_end_to_end_adm_class_conditional(tmp_path):
    """torch.save (nested, DDP prefix) -> CLI without torch -> dq.models.load == torch."""
    tm = randomize_(torch_model(ADM_COND), 1)
    src = tmp_path / "adm.pt"
    torch.save({"model": {f"module.{k}": v for k, v in tm.state_dict().items()}, "epoch": 3},
               src)
    dst = tmp_path / "out"
    res = _cli(src, dst, "--set", "num_heads=2", "--set", "num_heads_upsample=4",
               "--set", "use_new_attention_order=true", "--set", "image_size=32",
               block_torch=True)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1 and "converted" in res.stdout
    assert "stripped prefixes module." in res.stdout and "'model'" in res.stdout
    _check_parity(tm, dst, ADM_COND)
    # a converted official checkpoint samples with the official example's settings
    assert M.load(dst).sampler == dq.Sampler.official()


@pytest.mark.slow
def test_cli_end_to_end_ddpm_list_format_picks_ema(tmp_path):
    """ermongroup/ddim saves [model, optimizer, epoch, step, ema]: the EMA weights are used."""
    raw, ema = randomize_(torch_model(DDPM_SMALL), 2), randomize_(torch_model(DDPM_SMALL), 3)
    opt = torch.optim.Adam(raw.parameters()).state_dict()
    src = tmp_path / "ddpm.ckpt"
    ema_sd = {**ema.state_dict(), "logvar": torch.zeros(1000)}  # ddim "bayesian" extra
    torch.save([raw.state_dict(), opt, 10, 1000, ema_sd], src)
    dst = tmp_path / "out"
    res = _cli(src, dst, "--set", "resolution=32")
    assert res.returncode == 0, res.stderr
    assert "from '4'" in res.stdout and "ignored unused keys: logvar" in res.stdout
    _check_parity(ema, dst, DDPM_SMALL)
    with pytest.raises(FileExistsError, match="already exists"):
        wc.convert(src, dst)
    wc.convert(src, dst, overwrite=True, key="0", overrides={"resolution": "32"})
    kernel = M.load(dst).params["conv_in"]["kernel"]
    np.testing.assert_array_equal(kernel, raw.conv_in.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddpm.ckpt", "out"]  # no temp dirs


def test_golden_checkpoint_reproduces_official_output(tmp_path):
    if not (GOLDEN_PT.exists() and GOLDEN_NPZ.exists()):
        pytest.skip(f"golden files not found under {SHARED / 'golden'}")
    ref = np.load(GOLDEN_NPZ)
    x = ref["net_input_x"].transpose(0, 2, 3, 1)
    want = ref["net_output"].transpose(0, 2, 3, 1)
    result = wc.convert(GOLDEN_PT, tmp_path / "golden", preset="adm-tiny-golden")
    assert result.num_params == 828_358
    model = M.load(tmp_path / "golden")
    out = fast_jit(model.eps_fn)(model.params, x, ref["net_input_t"])
    assert rel_err(out, want) < 1e-5
    # without a preset the architecture is inferred and matched to the same preset
    auto = wc.convert(GOLDEN_PT, tmp_path / "auto")
    assert auto.config == TINY and any("matches preset" in n for n in auto.notes)


def test_safetensors_legacy_and_half_sources(tmp_path):
    from safetensors.torch import save_file

    sd = _tiny_state_dict()
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({k: v.half() for k, v in sd.items()}, tmp_path / "half.pt")
    ref = {k: v.numpy() for k, v in sd.items()}
    for name in ("zip.pt", "legacy.pt", "w.safetensors"):
        got = wc.load_torch_state_dict(tmp_path / name)
        assert got.keys() == ref.keys()
        assert all(np.array_equal(got[k], ref[k]) for k in ref), name
    half = wc.load_torch_state_dict(tmp_path / "half.pt")
    assert half["out.2.weight"].dtype == np.float16
    base = wc.convert(tmp_path / "zip.pt", tmp_path / "a")
    for name in ("legacy.pt", "w.safetensors"):
        wc.convert(tmp_path / name, tmp_path / name.replace(".", "_"))
    res = wc.convert(tmp_path / "half.pt", tmp_path / "h", dtype="bfloat16")
    assert res.source_dtypes == ("float16",) and base.source_dtypes == ("float32",)
    pa = M.load(tmp_path / "a").params
    for other in ("legacy_pt", "w_safetensors"):
        for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(M.load(tmp_path / other).params),
                        strict=True):
            np.testing.assert_array_equal(u, v)
    h = M.load(tmp_path / "h")
    assert h.dtype == "bfloat16" and jax.tree.leaves(h.params)[0].dtype == np.float32
    for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(h.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4)  # fp16 source rounding


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("evil_cls,global_name", [(_Evil, "system"), (_EvalEvil, "eval")])
def test_code_execution_refused_raw_and_in_zip(tmp_path, evil_cls, global_name):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"w": evil_cls(marker)}, protocol=2))
    # a real torch zip checkpoint whose data.pkl is replaced by the malicious pickle
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    evil_zip = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil_zip, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps({"w": evil_cls(marker)}, protocol=2)
            zout.writestr(item, data)
    refused = f"refusing to load global.*{global_name}"
    for path in (raw, evil_zip):
        with pytest.raises(wc.UnsafeCheckpointError, match=refused):
            wc.load_torch_state_dict(path)
        with pytest.raises(wc.UnsafeCheckpointError):
            wc.convert(path, tmp_path / "dst")
        assert not marker.exists()
        assert not (tmp_path / "dst").exists()
    if evil_cls is _EvalEvil:
        return  # the CLI path is checked once
    res = _cli(evil_zip, tmp_path / "dst")
    assert res.returncode == 2 and "refusing to load global" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "dst").exists()


def test_truncated_and_non_checkpoint_files(tmp_path):
    from safetensors.torch import save_file

    sd = _tiny_state_dict()
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    for name in ("zip.pt", "legacy.pt", "w.safetensors"):
        data = (tmp_path / name).read_bytes()
        for cut in (len(data) // 2, len(data) - 100):
            bad = tmp_path / f"trunc_{cut}_{name}"
            bad.write_bytes(data[:cut])
            with pytest.raises(wc.CheckpointError, match="truncated|corrupt") as e:
                wc.convert(bad, tmp_path / "dst")
            assert str(bad) in str(e.value)
            assert not (tmp_path / "dst").exists()
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(wc.CheckpointError, match="not a PyTorch checkpoint"):
        wc.convert(text, tmp_path / "dst")
    with pytest.raises(wc.CheckpointError, match="no such file"):
        wc.convert(tmp_path / "absent.pt", tmp_path / "dst")


def test_wrong_preset_lists_what_does_not_match(tmp_path):
    src = tmp_path / "tiny.pt"
    torch.save(_tiny_state_dict(), src)
    with pytest.raises(wc.ConversionError) as e:
        wc.convert(src, tmp_path / "dst", preset="adm-imagenet256-uncond")
    msg = str(e.value)
    assert "does not match preset 'adm-imagenet256-uncond'" in msg
    assert "model_channels: 256 in the config, 32 in the checkpoint" in msg
    assert "missing keys" in msg and "input_blocks.12.0.in_layers.0.weight" in msg
    assert "shape mismatches" in msg and "time_embed.0.weight: (1024, 256) vs (128, 32)" in msg
    with pytest.raises(ValueError, match="is a ddpm config but the checkpoint has adm keys"):
        wc.convert(src, tmp_path / "dst", preset="ddpm-cifar10")
    assert not (tmp_path / "dst").exists()


def test_missing_unexpected_and_mismatched_keys_all_listed(tmp_path):
    sd = _tiny_state_dict()
    del sd["out.2.bias"], sd["middle_block.1.qkv.weight"]
    sd["extra.weight"] = torch.zeros(3)
    sd["time_embed.2.bias"] = torch.zeros(7)
    src = tmp_path / "bad.pt"
    torch.save(sd, src)
    with pytest.raises(wc.ConversionError) as e:
        wc.convert(src, tmp_path / "dst", preset="adm-tiny-golden")
    msg = str(e.value)
    assert "2 missing, 1 unexpected, 1 shape-mismatched" in msg
    for key in ("out.2.bias", "middle_block.1.qkv.weight", "extra.weight",
                "time_embed.2.bias: (128,) vs (7,)"):
        assert key in msg
    assert not (tmp_path / "dst").exists()


def test_attention_heads_required_when_no_preset_matches(tmp_path):
    cfg = M.replace_fields(TINY, model_channels=64, num_head_channels=32)
    tm = randomize_(torch_model(cfg), 4)
    src = tmp_path / "m.pt"
    torch.save(tm.state_dict(), src)
    with pytest.raises(ValueError, match="--set num_head_channels"):
        wc.convert(src, tmp_path / "dst")
    res = wc.convert(src, tmp_path / "dst", overrides=["num_head_channels=32", "image_size=32"])
    assert res.config == cfg
    assert any("use_new_attention_order=False assumed" in n for n in res.notes)


def test_state_dict_selection_and_prefixes(tmp_path):
    a, b = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    src = tmp_path / "nested.pt"
    torch.save({"model": a, "ema": b, "step": 3, "args": {"lr": 1.0}}, src)
    obj = read_checkpoint(src)
    sd, where = pick_state_dict(obj)
    assert where == "ema" and sd["w"].numpy().tolist() == [0, 0]
    sd, where = pick_state_dict(obj, "model")
    assert where == "model" and sd["w"].numpy().tolist() == [1, 1]
    with pytest.raises(wc.CheckpointError, match="no entry 'nope'"):
        pick_state_dict(obj, "nope")
    with pytest.raises(wc.CheckpointError, match="not a dict of tensors"):
        pick_state_dict(obj, "args")
    torch.save([a, {"state": {}, "param_groups": []}, 5, b], src)
    assert pick_state_dict(read_checkpoint(src))[1] == "3"
    assert pick_state_dict(read_checkpoint(src), "0")[1] == "0"
    torch.save({"epoch": 1, "args": {"lr": 1.0}}, src)
    with pytest.raises(wc.CheckpointError, match="no state dict found"):
        pick_state_dict(read_checkpoint(src))
    stripped, removed = strip_prefixes({"module._orig_mod.a": 1, "module._orig_mod.b": 2})
    assert stripped == {"a": 1, "b": 2} and removed == ["module.", "_orig_mod."]
    assert strip_prefixes({"model.a": 1, "b": 2})[1] == []


def test_inference_recovers_every_preset_and_flag_combination():
    from test_models import CASES

    for name, cfg in M.PRESETS.items():
        shapes = {k: v[1] for k, v in expected_keys(cfg).items()}
        config, notes, _ = wc.resolve_config(shapes)
        assert config == cfg and notes == [f"matches preset {name}"]
    for cfg in CASES.values():  # heads/order/size are not in the weights: given with --set
        shapes = {k: v[1] for k, v in expected_keys(cfg).items()}
        names = (("num_heads", "num_head_channels", "num_heads_upsample",
                  "use_new_attention_order", "image_size") if cfg.architecture == "adm"
                 else ("resolution",))
        config, _, _ = wc.resolve_config(shapes, overrides={n: str(getattr(cfg, n))
                                                            for n in names})
        assert config == cfg


def test_set_value_parsing():
    assert parse_value(M.ADMConfig, "use_new_attention_order", "True") is True
    assert parse_value(M.ADMConfig, "resblock_updown", "0") is False
    assert parse_value(M.ADMConfig, "num_classes", "none") is None
    assert parse_value(M.ADMConfig, "num_classes", "1000") == 1000
    assert parse_value(M.ADMConfig, "channel_mult", "0.5,1,2") == (0.5, 1.0, 2.0)
    assert parse_value(M.ADMConfig, "attention_resolutions", "32,16,8") == (32, 16, 8)
    assert parse_value(M.DDPMConfig, "dropout", "0.1") == 0.1
    assert parse_value(M.ADMConfig, "prediction", "v") == "v"  # a v-prediction checkpoint
    with pytest.raises(ValueError, match="unknown adm field"):
        parse_value(M.ADMConfig, "bogus", "1")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_value(M.ADMConfig, "num_heads", "many")
