"""Where a solver would stop with another tolerance, from recorded depth curves.

``bench_depth.py`` records, for every evaluation, the solver's stopping measure and the image
it would return at that point. For the default solver (triangular Anderson, settled rows
only when exactly fixed) the iterates and the returned best iterate do not depend on the
tolerance, so its stop under any tolerance can be read off the curve without re-running the
solver: the first evaluation after the warm-up whose measure is ≤ tol. For each tolerance
this reports that depth and whether what is returned there is sequential quality (within
0.1 dB of the sequential PSNR against the ground truth, or ≥ 50 dB from the sequential x̂,
the depth benchmark's criterion), then a summary per tolerance.

    python experiments/stop_tolerance.py experiments/results/bench_depth --solver default \
        --tols 0.1 0.2 0.3 0.5 1 --out experiments/results/stop_tolerance
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import header, table  # noqa: E402
from bench_depth import sequential_quality, stops_here, variants  # noqa: E402


def load(prefix: str, solver: str):
    """The curves of ``solver`` in ``<prefix>_curves.json`` with their sequential PSNR from
    ``<prefix>.csv``."""
    seq = {}
    with open(f"{prefix}.csv") as f:
        for r in csv.DictReader(f):
            seq[(r["model"], r["T"], r["task"], r["image"], r["sampler"])] = float(r["seq_psnr"])
    out = []
    for c in json.loads(Path(f"{prefix}_curves.json").read_text()):
        if c["solver"] == solver:
            key = (c["model"], str(c["T"]), c["task"], c["image"], c["sampler"])
            out.append(dict(c, seq_psnr=seq[key]))
    return out


def stop_at(points, tol, solver, coarse=0):
    """The point where ``solver`` (a solver value: its warm-up) would stop with tolerance
    ``tol``: the first whose measure is ≤ tol after the warm-up (None: never)."""
    for p in points:
        if stops_here(p["depth"] - coarse, p["residual"], solver, tol):
            return p
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefixes", nargs="+", help="bench_depth --out prefixes")
    ap.add_argument("--solver", default="default")
    ap.add_argument("--tols", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 1.0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    curves = [c for prefix in args.prefixes for c in load(prefix, args.solver)]
    if not curves:
        raise SystemExit(f"no curves of solver {args.solver!r} in {args.prefixes}")
    rows, summary = [], {tol: dict(ok=0, missed=0, depths={}) for tol in args.tols}
    for c in curves:
        row = dict(T=c["T"], task=c["task"], image=c["image"], sampler=c["sampler"])
        var = variants(c["T"], [args.solver])[args.solver]
        for tol in args.tols:
            p = stop_at(c["points"], tol, var.solver, var.coarse)
            s = summary[tol]
            if p is None:
                row[f"tol {tol:g}"] = "–"
                s["missed"] += 1
                continue
            ok = sequential_quality(p, c["seq_psnr"])
            s["ok"] += ok
            s["depths"].setdefault(c["T"], []).append(p["depth"])
            row[f"tol {tol:g}"] = (f"{p['depth']} {'ok' if ok else 'EARLY'} "
                                   f"({min(p['psnr_seq'], 99):.0f} dB)")
        rows.append(row)
    summ = []
    for tol, s in summary.items():
        summ.append(dict(tol=f"{tol:g}", sequential_quality_at_stop=f"{s['ok']}/{len(curves)}",
                         no_stop_within_cap=s["missed"],
                         **{f"max_depth_T{T}": max(d) for T, d in sorted(s["depths"].items())}))
    files = ", ".join(f"`{p}_curves.json`" for p in args.prefixes)
    lines = header("Stopping tolerance from recorded depth curves", "stop_tolerance.py", [
        f"curves: solver `{args.solver}` in {files}",
        "each cell: the depth at which the solver stops with that tolerance, whether what it "
        "returns there is sequential quality (ok: within 0.1 dB of the sequential PSNR or "
        "≥ 50 dB from the sequential x̂; EARLY: neither) and its PSNR against the sequential "
        "x̂; – = no stop within the curve's cap",
    ]) + ["## Summary", ""] + table(summ) + ["", "## Per curve", ""] + table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
