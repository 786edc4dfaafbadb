"""CPU numerics: do results move with the CPU, and what does pinning them (lpoi/numerics.py) cost?

Runs one workload — the embedded default's three networks on two sample images: Grounding DINO and SAM
(the original packages, as detect/segment run them) and the tiny Idefics2 forward + backward (as reference
and train run it) — in fresh processes under several numerics and prints, side by side:

* the sha256 of every output (boxes, masks, logits, gradients, and the freshly built weights): under
  ``native`` numerics they change with the kernels the CPU offers; under ``pinned`` they must not;
* the median seconds of each part and the pinned/native ratio, measured in the same run, interleaved.

"CPUs" are the ISA levels this CPU offers (torch's ATEN_CPU_CAPABILITY default/avx2/avx512, MKL's
MKL_ENABLE_INSTRUCTIONS, oneDNN's ONEDNN_MAX_CPU_ISA, which make the libraries act as on a CPU that has only
those instructions) and, with ``--qemu``, whole other processors emulated by ``qemu-x86_64 -cpu MODEL``
(e.g. EPYC-Rome-v1: an AMD CPU with AVX2 and no AVX-512; Haswell-v1: an Intel one), which also reports
another vendor and other cache sizes. Emulation is slow (minutes a run) and is only used for the hashes.

    python bench/numerics.py                       # ISA levels of this CPU, 3 timed repeats
    python bench/numerics.py --qemu EPYC-Rome-v1 --qemu Haswell-v1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lpoi.numerics import ENV  # noqa: E402  (imports no torch)

# the libraries' own switches that make them act as on a CPU with fewer instructions
HOSTS = {
    "this CPU": {},
    "AVX2-only CPU": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX-512 CPU": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def _digest(t) -> str:
    import torch

    if isinstance(t, (list, tuple)):
        h = hashlib.sha256()
        for x in t:
            h.update(_digest(x).encode())
        return h.hexdigest()[:12]
    t = torch.as_tensor(t).detach().float().contiguous()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:12]


def worker(reps: int) -> None:
    """One process: build the tiny models (into $LPOI_CACHE), run the workload ``reps`` times, print JSON."""
    import numpy as np
    import torch
    from PIL import Image

    from lpoi.listgen.backends import open_detector, open_segmenter
    from lpoi.models import load_vlm
    from lpoi.models.chat import encode_batch, prompt_text
    from lpoi.models.groundingdino import predict
    from lpoi.numerics import signature

    images = [Image.open(REPO / f"data/sample/images/scene_00{i}.png").convert("RGB") for i in (0, 1)]
    t0 = time.perf_counter()
    det = open_detector("groundingdino", "tiny/groundingdino-py")
    seg = open_segmenter("segment-anything", "tiny/segment-anything")
    vlm, proc = load_vlm("tiny/idefics2")
    build = time.perf_counter() - t0
    hashes = {"weights": _digest([p for m in (det.original.model, seg.model, vlm) for p in m.parameters()])}
    times: dict[str, list[float]] = {"detect": [], "segment": [], "vlm fwd+bwd": []}
    texts = [prompt_text(proc, "Describe this image.") + " A red car parked next to a tree."] * 2
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            enc = det.encode(None, images, [["car", "tree"], ["dog"]])
            boxes = predict(det.original.model, enc.inputs["pixels"], enc.inputs["mask"], enc.inputs["captions"])
        times["detect"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            masks = seg.segment(seg.encode(None, images, [np.array([[4, 4, 40, 40]], np.float32)] * 2))
        times["segment"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch = encode_batch(proc, texts, images, padding_side="right").inputs
        vlm.zero_grad()
        out = vlm(**batch)
        logp = torch.log_softmax(out.logits.float(), -1)
        logp.gather(-1, batch["input_ids"][:, 1:, None].clamp(min=0)).sum().backward()
        times["vlm fwd+bwd"].append(time.perf_counter() - t0)
    hashes.update({"detect": _digest(list(boxes)), "segment": _digest([torch.as_tensor(m[0]) for m in masks]),
                   "vlm logits": _digest(out.logits), "vlm grads": _digest([p.grad for p in vlm.parameters()
                                                                          if p.grad is not None])})
    print(json.dumps({"signature": signature(), "capability": torch.backends.cpu.get_cpu_capability(),
                      "build_s": build, "hashes": hashes, "times": times}))


def run(numerics: str, host: dict, reps: int, qemu: str | None = None, cache: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV and k not in ("MKL_ENABLE_INSTRUCTIONS",)}
    env.update(host)
    if numerics == "native 1-thread":  # the kernels as the CPU offers them, the pin's thread count
        env.update(OMP_NUM_THREADS=ENV["OMP_NUM_THREADS"], MKL_NUM_THREADS=ENV["MKL_NUM_THREADS"])
    if numerics == "pinned":
        env.update(ENV)  # the pin overrides the host's ATen/oneDNN caps, as the stages' pin overrides a shell
    env["PYTHONPATH"] = str(REPO)
    if cache:
        env["LPOI_CACHE"] = cache
    cmd = [sys.executable, __file__, "--worker", "--reps", str(reps)]
    if qemu:
        cmd = ["qemu-x86_64", "-cpu", qemu, *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"worker failed ({numerics}, {host}, {qemu}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="timed repeats per process (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved native/pinned rounds (default: %(default)s)")
    ap.add_argument("--qemu", action="append", default=[], metavar="MODEL",
                    help="also run under qemu-x86_64 -cpu MODEL (hashes only; needs Debian's qemu-user)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.reps)

    # a private cache: every numerics builds its own tiny models, so the weights' hash is a fresh build's
    cache = tempfile.mkdtemp(prefix="lpoi-bench-numerics-")
    try:
        rows = []
        for numerics in ("native", "pinned"):
            for host_name, host in HOSTS.items():
                res = run(numerics, host, 1, cache=cache)
                rows.append((numerics, host_name, res))
        for model in args.qemu:
            if not shutil.which("qemu-x86_64"):
                raise SystemExit("--qemu needs qemu-x86_64 (apt-get install qemu-user)")
            # one thread: qemu-user's emulation of several OpenMP threads can crash; a fresh cache: the emulated
            # CPU builds the weights itself
            for numerics in ("native 1-thread", "pinned"):
                try:
                    res = run(numerics, {}, 1, qemu=model, cache=tempfile.mkdtemp(dir=cache))
                except SystemExit as e:
                    print(f"[{numerics} under qemu {model} failed: {str(e).splitlines()[0]}]")
                    continue
                rows.append((numerics, f"qemu {model}", res))
        parts = list(rows[0][2]["hashes"])
        print(f"{'numerics':16} {'CPU':22} {'kernels':8} " + " ".join(f"{p:12}" for p in parts))
        for numerics, host_name, res in rows:
            print(f"{numerics:16} {host_name:22} {res['capability']:8} "
                  + " ".join(f"{res['hashes'][p]:12}" for p in parts))
        for kind in ("native", "pinned"):
            mine = [r for n, _, r in rows if n.startswith(kind)]
            distinct = {json.dumps(r["hashes"], sort_keys=True) for r in mine}
            print(f"{kind}: {len(distinct)} distinct result(s) over {len(mine)} CPUs")

        # speed: this CPU, interleaved rounds; "native" uses every core (torch's default), "native 1-thread"
        # isolates the cost of the pinned kernels from that of the pinned thread count
        variants = ("native", "native 1-thread", "pinned")
        times: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
        for _ in range(args.rounds):
            for numerics in variants:
                for part, ts in run(numerics, {}, args.reps, cache=cache)["times"].items():
                    times[numerics].setdefault(part, []).extend(ts)
        print(f"\nspeed on this CPU ({os.cpu_count()} cores; median s over {args.rounds} x {args.reps}; "
              "ratio = pinned / native 1-thread, > 1 = slower)")
        for part in times["native"]:
            a, b, c = (statistics.median(times[v][part]) for v in variants)
            print(f"  {part:12} native {a:7.4f}  native 1-thread {b:7.4f}  pinned {c:7.4f}  ratio {c / b:5.2f}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
