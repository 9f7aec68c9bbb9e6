"""Benchmark the converter and the converted network on the full ADM 256x256 (uncond) size.

    python experiments/bench_convert.py [--workdir DIR] [--runs 2] \
        [--out experiments/results/convert_benchmark.md]

1. writes a random full-size ``adm-imagenet256-uncond`` state dict (552,814,086 params,
   ~2.2 GB) with ``torch.save`` to a temporary directory (torch is only used for this);
2. converts it in a child process (``weights_convert.convert``): wall time, peak RSS
   (``resource.getrusage``) and peak traced allocations (``tracemalloc``, numpy included);
   spot-checks converted leaves against the torch tensors;
3. in another child: ``dq.models.load`` time, then compile time and run time of one jitted
   forward pass at 256x256, batch 1, in float32 and bfloat16 (same machine, same run, so the
   ratio is meaningful);
4. writes a markdown table with the machine description.

Needs ~5 GB free disk in the work directory and ~6 GB RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESET = "adm-imagenet256-uncond"


def _child_convert(src: str, dst: str) -> dict:
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    import weights_convert

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = weights_convert.convert(src, dst, progress=False)
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    return dict(seconds=seconds, import_seconds=t_import, num_params=res.num_params,
                timings=res.timings,
                num_tensors=res.num_tensors, notes=list(res.notes),
                traced_peak_mb=traced_peak / 2**20,
                maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _child_forward(dst: str, runs: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import deqir_jax.models as M

    t0 = time.perf_counter()
    model = M.load(dst)
    jax.block_until_ready(model.params)
    out = dict(load_seconds=time.perf_counter() - t0)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    t = np.array([500])
    compiled = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        m = M.from_params(model.config, model.params, dtype=dtype)
        t0 = time.perf_counter()
        compiled[name] = jax.jit(m.eps_fn).lower(m.params, x, t).compile()
        out[name] = dict(compile_seconds=time.perf_counter() - t0, all_runs=[])
    for _ in range(runs):  # alternate the variants so load drift affects both alike
        for name, fn in compiled.items():
            t0 = time.perf_counter()
            y = fn(model.params, x, t).block_until_ready()
            out[name]["all_runs"].append(time.perf_counter() - t0)
            out[name]["output"] = np.asarray(y, np.float32)
    for name in compiled:
        out[name]["run_seconds"] = statistics.median(out[name]["all_runs"])
        out[name]["finite"] = bool(np.isfinite(out[name]["output"]).all())
    f32, bf16 = out["float32"].pop("output"), out["bfloat16"].pop("output")
    out["bf16_vs_f32_rel_err"] = float(np.abs(bf16 - f32).max() / np.abs(f32).max())
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _write_checkpoint(path: Path) -> tuple[float, dict]:
    import torch

    import deqir_jax.models as M
    from weights_convert.mapping import expected_keys

    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    sd = {}
    for key, (_, shape, _) in expected_keys(M.PRESETS[PRESET]).items():
        fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
        sd[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
    torch.save(sd, path)
    probes = {k: sd[k][:2].clone().numpy() for k in
              ("input_blocks.0.0.weight", "middle_block.1.qkv.weight", "out.2.weight",
               "output_blocks.17.0.emb_layers.1.weight")}
    return time.perf_counter() - t0, probes


def _machine() -> dict:
    import flax
    import jax
    import orbax.checkpoint as ocp

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return dict(nproc=os.cpu_count(), cpu=cpu, memory=mem, python=platform.python_version(),
                jax=jax.__version__, flax=flax.__version__,
                orbax=getattr(ocp, "__version__", "?"), devices=str(jax.devices()),
                load=" ".join(f"{v:.1f}" for v in os.getloadavg()))


def _run_child(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if res.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _report(machine: dict, write_s: float, src_bytes: int, conv: dict, fwd: dict,
            checks: str) -> str:
    gb = src_bytes / 1e9
    f32, bf16 = fwd["float32"], fwd["bfloat16"]
    rows = [
        ("write random torch checkpoint (torch.save)", f"{write_s:.1f} s", f"{gb:.2f} GB"),
        ("convert (weights_convert.convert, child process)", f"{conv['seconds']:.1f} s",
         f"{gb / conv['seconds']:.2f} GB/s; {conv['num_tensors']} tensors, "
         f"{conv['num_params']:,} params"),
        *[(f"convert phase: {k.replace('_', ' ')}", f"{v:.1f} s", "")
          for k, v in conv["timings"].items()],
        ("convert: peak RSS of the child", f"{conv['maxrss_mb'] / 1024:.2f} GiB",
         f"{conv['maxrss_mb'] * 2**20 / src_bytes:.2f}x the checkpoint size"),
        ("convert: peak traced allocations (tracemalloc)",
         f"{conv['traced_peak_mb'] / 1024:.2f} GiB",
         "Python/numpy allocations only (jax buffers are not traced)"),
        ("dq.models.load (orbax restore)", f"{fwd['load_seconds']:.1f} s", ""),
        ("jit compile, float32, 1x256x256", f"{f32['compile_seconds']:.1f} s", ""),
        ("forward, float32, 1x256x256 (median)", f"{f32['run_seconds']:.2f} s",
         "runs: " + ", ".join(f"{v:.2f}" for v in f32["all_runs"])),
        ("jit compile, bfloat16", f"{bf16['compile_seconds']:.1f} s", ""),
        ("forward, bfloat16 (median)", f"{bf16['run_seconds']:.2f} s",
         f"{bf16['run_seconds'] / f32['run_seconds']:.2f}x the float32 time; rel. diff "
         f"{fwd['bf16_vs_f32_rel_err']:.1e}"),
        ("forward/load child: peak RSS", f"{fwd['maxrss_mb'] / 1024:.2f} GiB", ""),
    ]
    lines = [
        "# Converter and ADM-256 forward benchmark",
        "",
        "Command: `python experiments/bench_convert.py` (random full-size "
        f"`{PRESET}` weights, {conv['num_params']:,} params).",
        "",
        "| step | value | notes |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Checks: {checks}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "load")
        + f"; load average at the end {machine['load']} (the CPUs were shared with other jobs, "
        "so absolute times are upper bounds; float32 and bfloat16 runs were interleaved in one "
        "process, so their ratio is the comparable number).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="where to put the ~4.5 GB of temp files")
    p.add_argument("--runs", type=int, default=2, help="timed forward passes per dtype")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"
                                         / "convert_benchmark.md"))
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = (_child_convert(*rest) if kind == "convert"
                  else _child_forward(rest[0], int(rest[1])))
        print(json.dumps(result))
        return 0

    import numpy as np

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_convert_") as tmp:
        src, dst = Path(tmp) / "adm256.pt", Path(tmp) / "adm256_jax"
        print(f"writing {src} ...", flush=True)
        write_s, probes = _write_checkpoint(src)
        print(f"converting ({write_s:.0f} s to write) ...", flush=True)
        conv = _run_child(["--child", "convert", str(src), str(dst)])
        print(f"converted in {conv['seconds']:.1f} s; forward pass ...", flush=True)
        from deqir_jax.models import load

        params = load(dst).params
        spot = [
            np.array_equal(np.asarray(params["input_blocks_0_0"]["kernel"])[..., :2],
                           probes["input_blocks.0.0.weight"].transpose(2, 3, 1, 0)),
            np.array_equal(np.asarray(params["middle_block_1"]["qkv"]["kernel"])[:, :2],
                           probes["middle_block.1.qkv.weight"][..., 0].T),
            np.array_equal(np.asarray(params["final_conv"]["kernel"])[..., :2],
                           probes["out.2.weight"].transpose(2, 3, 1, 0)),
            np.array_equal(
                np.asarray(params["output_blocks_17_0"]["emb_linear"]["kernel"])[:, :2],
                probes["output_blocks.17.0.emb_layers.1.weight"].T),
        ]
        del params
        fwd = _run_child(["--child", "forward", str(dst), str(args.runs)])
        checks = (f"param count {conv['num_params']:,} "
                  f"({'ok' if conv['num_params'] == 552_814_086 else 'WRONG'}); "
                  f"spot-checked leaves equal to the torch tensors: {sum(spot)}/{len(spot)}; "
                  f"outputs finite: {fwd['float32']['finite'] and fwd['bfloat16']['finite']}.")
        report = _report(_machine(), write_s, src.stat().st_size, conv, fwd, checks)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
