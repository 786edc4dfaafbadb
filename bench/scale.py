"""Per-sample stages on the local runner vs Ray (``compute.engine``), in one run: samples/s and their ratio.

    python bench/scale.py                    # CPU: local (1 process) vs a local Ray with 2 CPU actors
    python bench/scale.py --workers 4 --copies 8
    python bench/scale.py --gpus 8           # a GPU node: local on 1 GPU vs 8 actors x 1 GPU

The committed project (``git archive HEAD``) is copied to a temp dir; the embedded default's pairs are
repeated ``--copies`` times (each copy's prompts marked, so ``prepare`` keeps them all); ``prepare`` runs
once; then for each engine the stage scripts detect -> segment -> verify -> lists -> reference run as DVC
runs them. samples/s = samples / wall seconds of detect + segment + verify + reference (stage processes,
model loading included); lists runs untimed (its input to reference). Each Ray stage starts its own local
Ray (``compute.address: null``, what a user's ``dvc repro`` does): that start-up is in the Ray side's time, and
is also printed apart, with the ratio without it (what a long run, or a joined cluster, approaches).
Last lines: ``identical=True`` when every output of the Ray side is byte-identical to the local side's, and
``ratio=X.XX`` (Ray samples/s over local samples/s). Not a timed test: it prints, it never asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TIMED = ("detect", "segment", "verify", "reference")
STAGES = {  # dvc.yaml's commands, with the run's own params file and out folders
    "detect": ["--prepared", "data/prepared", "--out", "{o}/detect", "--metrics", "{o}/detect.json"],
    "segment": ["--prepared", "data/prepared", "--detect", "{o}/detect", "--out", "{o}/segment",
                "--metrics", "{o}/segment.json"],
    "verify": ["--prepared", "data/prepared", "--segment", "{o}/segment", "--out", "{o}/verify",
               "--metrics", "{o}/verify.json"],
    "lists": ["--prepared", "data/prepared", "--segment", "{o}/segment", "--verify", "{o}/verify",
              "--out", "{o}/lists", "--metrics", "{o}/lists.json"],
    "reference": ["--lists", "{o}/lists", "--out", "{o}/reference", "--metrics", "{o}/reference.json"],
}


def _export(dst: Path) -> None:
    with subprocess.Popen(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, stdout=subprocess.PIPE) as git:
        with tarfile.open(fileobj=git.stdout, mode="r|") as tar:
            tar.extractall(dst, filter="data")


def _pairs(repo: Path, copies: int) -> int:
    src = json.loads((repo / "data/sample/pairs.json").read_text())
    rows = [{**r, "id": f"{r.get('id', i)}-c{c}", "prompt": r["prompt"] + ("" if c == 0 else f" ({c})")}
            for c in range(copies) for i, r in enumerate(src)]
    (repo / "data/sample/pairs.json").write_text(json.dumps(rows, indent=1))
    return len(rows)


def _run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[1:3])} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return time.perf_counter() - t0, r.stdout + r.stderr


def _side(repo: Path, engine: str, params: dict, env: dict) -> tuple[float, int, float]:
    (repo / f"params_{engine}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = f"out_{engine}"
    secs = startup = 0.0
    for stage, args in STAGES.items():
        cmd = [sys.executable, f"stages/{stage}.py", "--params", f"params_{engine}.yaml",
               *(a.format(o=out) for a in args)]
        s, log = _run(cmd, repo, env)
        ready = sum(float(m) for m in re.findall(r"Ray ready in ([0-9.]+) s", log))
        print(f"  {engine:5s} {stage:9s} {s:7.1f} s" + (f" (Ray start-up {ready:.1f} s)" if ready else ""), flush=True)
        if stage in TIMED:
            secs, startup = secs + s, startup + ready
    samples = json.loads((repo / out / "detect.json").read_text())["samples"]
    return secs, samples, startup


def _identical(repo: Path) -> bool:
    a, b = repo / "out_local", repo / "out_ray"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith("."))
    return all((b / f).is_file() and (a / f).read_bytes() == (b / f).read_bytes() for f in files
               if not f.name.endswith(".timings.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (default: %(default)s)")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs: local uses 1, Ray uses this many actors x 1 GPU")
    ap.add_argument("--copies", type=int, default=2, help="copies of the embedded default's pairs (default: 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp project (its path is printed)")
    args = ap.parse_args()
    workers = args.gpus or args.workers

    tmp = Path(tempfile.mkdtemp(prefix="lpoi-scale-"))
    repo = tmp / "repo"
    _export(repo)
    n = _pairs(repo, args.copies)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    _run([sys.executable, "stages/prepare.py", "--pairs", "data/sample/pairs.json", "--images", "data/sample/images",
          "--out", "data/prepared", "--metrics", "out_prepare.json"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    print(f"{n} pairs; local: 1 process; ray: {workers} actors" + (" x 1 GPU" if args.gpus else " x 1 CPU"))

    local_s, samples, _ = _side(repo, "local", {**params, "compute": {**params["compute"], "engine": "local"}}, env)
    ray_compute = {**params["compute"], "engine": "ray", "workers": workers, "gpus_per_worker": 1 if args.gpus else 0}
    ray_s, _, startup = _side(repo, "ray", {**params, "compute": ray_compute}, env)
    local_rate, ray_rate = samples / local_s, samples / ray_s
    print(f"local: {samples} samples through {'+'.join(TIMED)} in {local_s:.1f} s = {local_rate:.3f} samples/s")
    print(f"ray:   {samples} samples through {'+'.join(TIMED)} in {ray_s:.1f} s = {ray_rate:.3f} samples/s")
    print(f"ray:   of which {startup:.1f} s starting a local Ray and its actors in each stage (address: null); "
          f"without it {samples / (ray_s - startup):.3f} samples/s")
    print(f"identical={_identical(repo)}")
    print(f"ratio_without_startup={(samples / (ray_s - startup)) / local_rate:.2f}")
    print(f"ratio={ray_rate / local_rate:.2f}")
    if args.keep:
        print(f"kept: {repo}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
