"""Pinned CPU numerics: the same bits from every stage on every x86-64 CPU with AVX2.

Left alone, torch picks its CPU kernels by what the processor offers, so the same seed and the same code give
different float bits on different machines — and a training run amplifies a last-bit difference into a
different model. Four choices decide those bits on the CPU, and each is pinned here (measured with torch
2.14.1; ``bench/numerics.py`` prints the evidence):

* ``ATEN_CPU_CAPABILITY=avx2`` — ATen's vectorised kernels (GELU, LayerNorm, softmax, reductions, random
  init) exist in default/avx2/avx512 builds that round differently; avx2 is the widest level every AVX2 CPU has.
* ``MKL_CBWR=COMPATIBLE,STRICT`` — MKL's conditional numerical reproducibility (matmul, and the ``exp``/``log``
  vector math torch routes through MKL). The AVX2 branch is not enough: on an AMD CPU MKL's vector math
  still takes its compatible branch, so an AMD and an Intel CPU differ unless both are pinned to COMPATIBLE.
  ``STRICT`` makes the results independent of MKL's thread count too.
* ``ONEDNN_MAX_CPU_ISA=AVX2`` — oneDNN (convolutions, bf16 matmul) dispatches up to AMX on a new Xeon.
* one intra-op thread (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``torch.set_num_threads``) — ATen splits
  large reductions by thread, so the thread count changes the summation order.

They must be in the environment before torch loads, so :func:`pin_environment` runs at the top of every stage
entry point (``stages/_common.py``) and of the test harness (``tests/conftest.py``), overriding the user's
shell: a DVC stage's outputs must not depend on it. :func:`signature` is the part of a model's identity (and
of the tiny-model cache key) that names these numerics, so weights built or scored under other numerics are
never reused.

Not covered: CPUs without AVX2 (made before ~2013-2015: torch falls back to its default kernels, so results
may differ in the last bits — :func:`check` says so once), GPUs (CUDA kernels differ between GPU models and
library versions), and other versions of torch, transformers or MKL.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["ENV", "PROFILE", "THREADS", "check", "is_pinned", "pin", "pin_environment", "signature"]

THREADS = 1  # intra-op threads: the tiny models gain little from more, and the count changes reduction order
ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
}
PROFILE = "x86-64-avx2/mkl-compatible-strict/1-thread"  # names ENV in fingerprints; change it with ENV


def pin_environment(environ=os.environ) -> None:
    """Set :data:`ENV` (overriding the shell). Call before ``import torch``: torch, MKL and oneDNN read
    these once, at their first use; a later call cannot change kernels already chosen."""
    environ.update(ENV)


def pin() -> None:
    """The environment (:func:`pin_environment`) and, once torch is importable, its thread count."""
    pin_environment()
    import torch

    torch.set_num_threads(THREADS)


def is_pinned(environ=os.environ) -> bool:
    return all(environ.get(k) == v for k, v in ENV.items())


def signature() -> str:
    """The numerics the process computes with: :data:`PROFILE` when pinned on a CPU that honours it, else
    the native kernels' description (so results under other numerics are cached apart)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if is_pinned() and capability == "AVX2":
        return PROFILE
    return (f"native/{capability}/mkl-{os.environ.get('MKL_CBWR', 'auto')}/"
            f"onednn-{os.environ.get('ONEDNN_MAX_CPU_ISA', 'all')}/threads-{os.environ.get('OMP_NUM_THREADS', 'all')}")


_checked = False


def check() -> None:
    """Warn once when this process does not compute with the pinned numerics (a CPU without AVX2, or
    torch imported before :func:`pin_environment`)."""
    global _checked
    if _checked:
        return
    _checked = True
    sig = signature()
    if sig != PROFILE:
        warnings.warn(f"CPU numerics are not the pinned profile ({sig} instead of {PROFILE}): results may "
                      "differ from other machines in the last bits", RuntimeWarning, stacklevel=2)
