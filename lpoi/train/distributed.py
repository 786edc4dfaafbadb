"""How the recipe runs on one process, DDP or FSDP2 -- all through accelerate.

* **one process / DDP** (``conf/accelerate/ddp.yaml``): every process holds the base model; LoRA
  gradients are averaged. ``find_unused_parameters``: LoRA on all linear layers adapts layers some
  forwards never use (LLaVA-1.5 reads the vision tower's second-to-last layer).
* **FSDP2** (``conf/accelerate/fsdp.yaml``, ``fully_shard``): parameters, gradients and AdamW state are
  sharded per parameter, so frozen base weights and trainable LoRA weights share a wrapped unit without
  FSDP1's ``use_orig_params`` constraints. The loaded model stays on the CPU (:func:`place_model`):
  ``fully_shard`` moves it to the devices unit by unit, so no GPU ever holds the whole base model.
  Units are the model's own ``_no_split_modules`` classes that occur in it (decoder layers, vision
  encoder layers) unless the config names them. Only trainable
  tensors are ever saved: checkpoints as shards (``checkpoint.py``), the final adapter gathered tensor
  by tensor (:func:`trainable_state_dict`), never the full 13B state dict.

accelerate only enables its FSDP integration on GPU-type backends; on a CPU-only machine
(``torch.distributed`` with gloo) :func:`make_accelerator` switches the state to FSDP itself, so the
very code path GPU users run (accelerate's ``fsdp2_prepare_model``, FSDP2's reduce-scatter,
DTensor grad clipping) is what the CPU test exercises. DeepSpeed is not supported (see the README).
"""

from __future__ import annotations

import os

import torch

from lpoi.config import TrainParams

__all__ = ["PRECISIONS", "make_accelerator", "place_model", "prepare_fsdp_wrapping", "sharding_places_model",
           "trainable_state_dict"]

PRECISIONS = {"fp32": ("float32", "no"), "bf16": ("bfloat16", "bf16"), "fp16": ("float16", "fp16")}
"""``train.precision`` -> (base weights dtype, accelerate mixed precision). LoRA weights stay float32."""


def _no_accelerator() -> bool:
    """True on CPU-only machines: accelerate then sets up multi-process CPU training (gloo) under
    ``torchrun``; without ``cpu=True`` it would silently run every process as a separate single run."""
    if torch.cuda.is_available():
        return False
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return not ((mps is not None and mps.is_available()) or (xpu is not None and xpu.is_available()))


def make_accelerator(cfg: TrainParams):
    """The run's ``Accelerator``: mixed precision of ``train.precision``, ``train.grad_accum`` micro-steps."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType
    from accelerate.utils import FullyShardedDataParallelPlugin as FsdpPlugin

    # accelerate keeps one state per process and refuses an Accelerator with another precision; one
    # process may run several recipes (tests, a grid runner). The process group (PartialState) stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(
        mixed_precision=PRECISIONS[cfg.precision][1],
        cpu=_no_accelerator(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        gradient_accumulation_steps=cfg.grad_accum,
    )
    if acc.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("DeepSpeed is not supported by the training recipe; use conf/accelerate/fsdp.yaml")
    fsdp_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_env and acc.distributed_type == DistributedType.MULTI_CPU:
        plugin = FsdpPlugin()  # reads the FSDP_* variables `accelerate launch` set
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
    if acc.distributed_type == DistributedType.FSDP and acc.state.fsdp_plugin.fsdp_version != 2:
        raise ValueError("only FSDP2 is supported: set fsdp_version: 2 in the accelerate config")
    return acc


def sharding_places_model(accelerator) -> bool:
    """True under FSDP2: ``accelerator.prepare`` (``fsdp2_prepare_model``) calls ``fully_shard`` unit by
    unit, and each call moves only that unit's tensors to the device before keeping this process's shard
    (back on the CPU with ``fsdp_offload_params``). accelerate itself never moves an FSDP model."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def place_model(accelerator, model: torch.nn.Module) -> None:
    """Put the freshly loaded (CPU) model on the accelerator's device -- except under FSDP2, where it stays
    on the CPU for :func:`sharding_places_model`: moving it whole first would hold the full base model on
    every GPU at once, defeating the sharding and ``fsdp_offload_params``."""
    if not sharding_places_model(accelerator):
        model.to(accelerator.device)


def prepare_fsdp_wrapping(accelerator, model: torch.nn.Module) -> None:
    """Under FSDP with transformer-based wrapping and no class list configured: wrap the classes of the
    model's ``_no_split_modules`` that occur in it (hub models list classes they do not contain)."""
    from accelerate.utils import DistributedType
    from accelerate.utils.dataclasses import get_module_class_from_name

    if accelerator.distributed_type != DistributedType.FSDP:
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        names = getattr(model, "_no_split_modules", None) or []
        present = [n for n in names if get_module_class_from_name(model, n) is not None]
        plugin.transformer_cls_names_to_wrap = sorted(present)


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable parameters, by name. Collective under FSDP:
    every process must call it (each sharded tensor is all-gathered on its own, so memory stays ~LoRA)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            t = p.detach().full_tensor() if isinstance(p, DTensor) else p.detach()
            out[name] = t.cpu().contiguous()
    return out
