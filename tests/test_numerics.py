"""Pinned CPU numerics (lpoi/numerics.py): every stage computes the same bits on any x86-64 CPU with AVX2,
whatever the user's shell says; what is computed under other numerics is never reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpoi import numerics

REPO = Path(__file__).resolve().parents[1]

# One float32 workload through every kind of kernel the pin decides: MKL matmul (sgemm) and vector math (exp),
# ATen's vectorised GELU / LayerNorm / softmax and its multi-threaded sum, oneDNN's convolution, bf16 matmul,
# and random init. Run as a stage runs: `import _common` first (stages/_common.py pins before torch loads).
WORKLOAD = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import _common
_common.numerics.pin()
import torch
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.LayerNorm(8 * 14 * 14),
                        torch.nn.Linear(8 * 14 * 14, 96), torch.nn.Softmax(-1), torch.nn.Linear(96, 16))
x = torch.randn(4, 3, 16, 16)
a, b = torch.randn(129, 257), torch.randn(257, 65)
with torch.no_grad():
    parts = {"init": torch.cat([p.flatten() for p in m.parameters()]), "conv": m[0](x), "network": m(x),
             "matmul": a @ b, "sum": torch.randn(300_000).sum().reshape(1), "exp": torch.randn(4096).exp(),
             "bf16 matmul": (a.bfloat16() @ b.bfloat16()).float()}
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                  "signature": _common.numerics.signature(),
                  "hashes": {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:12] for k, v in parts.items()}}))
"""

# What the workload gives under the pinned numerics, measured on an Intel Xeon with AVX-512 and AMX, and under
# qemu-x86_64 as an AMD EPYC-Rome (AVX2, no AVX-512) and an Intel Haswell: the same bits on all three.
PINNED = {"init": "d1cfd0773ab6", "conv": "99be861fba98", "network": "94e29fa4962d", "matmul": "011e2c31a137",
          "sum": "d6ea29c8e916", "exp": "fb056231604b", "bf16 matmul": "a21a973788b7"}

# A shell that asks for other numerics: the widest kernels, MKL's automatic branch, two threads.
HOSTILE = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "ALL", "OMP_NUM_THREADS": "2",
           "MKL_NUM_THREADS": "2"}
# The libraries' switches that make them act as on a CPU with only AVX2 / with AVX-512.
HOSTS = {"this CPU": {}, "AVX2-only": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                       "ONEDNN_MAX_CPU_ISA": "AVX2"},
         "AVX-512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}}


def _run(env_extra: dict, pinned: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in numerics.ENV and k != "MKL_ENABLE_INSTRUCTIONS"}
    env.update(env_extra)
    code = WORKLOAD if pinned else WORKLOAD.replace("import _common\n_common.numerics.pin()\n", "").replace(
        '"signature": _common.numerics.signature(),', "")
    r = subprocess.run([sys.executable, "-c", code, str(REPO / "stages")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _has_avx2() -> bool:
    return "avx2" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False


def test_pin_environment_overrides_the_shell():
    env = dict(HOSTILE)
    numerics.pin_environment(env)
    assert numerics.is_pinned(env)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "COMPATIBLE,STRICT"
    assert env["OMP_NUM_THREADS"] == "1"


def test_the_test_harness_computes_with_the_pinned_numerics():
    import torch

    assert numerics.is_pinned()
    assert torch.get_num_threads() == numerics.THREADS
    if _has_avx2():
        assert numerics.signature() == numerics.PROFILE


@pytest.mark.skipif(not _has_avx2(), reason="the pinned numerics need a CPU with AVX2")
def test_a_stage_process_ignores_a_hostile_shell_and_gives_the_recorded_bits():
    """A stage entry point pins before torch loads, whatever the shell exported, and computes exactly the bits
    recorded on three other CPUs (see PINNED)."""
    res = _run(HOSTILE)
    assert res["capability"] == "AVX2" and res["threads"] == numerics.THREADS
    assert res["signature"] == numerics.PROFILE
    assert res["hashes"] == PINNED


@pytest.mark.skipif(not _has_avx2(), reason="the pinned numerics need a CPU with AVX2")
def test_pinned_bits_do_not_move_with_the_isa_while_native_ones_do():
    pinned = {name: _run(host)["hashes"] for name, host in HOSTS.items()}
    assert all(h == PINNED for h in pinned.values()), pinned
    native = {name: _run(host, pinned=False)["hashes"] for name, host in HOSTS.items()}
    import torch

    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # a CPU that offers both levels: they differ
        assert native["AVX2-only"] != native["AVX-512"], native
    assert any(h != PINNED for h in native.values()), "the native kernels happen to give the pinned bits"


def test_model_identity_and_tiny_cache_follow_the_numerics(monkeypatch):
    """Weights built or results keyed under other numerics are other results: the model identity (part of
    every stage fingerprint and reference row key) and the tiny-model cache key name the numerics."""
    from lpoi.models import identity, tiny

    before, path = identity.model_digest("tiny/llama"), tiny.tiny_dest("llama")
    assert identity.model_identity("tiny/llama")["numerics"] == numerics.signature()
    monkeypatch.setattr(numerics, "signature", lambda: "native/AVX512/mkl-auto/onednn-all/threads-all")
    assert identity.model_digest("tiny/llama") != before
    assert tiny.tiny_dest("llama") != path
