"""LoRA for the recipe: the peft config of ``train.lora``, a byte-deterministic adapter folder, fp32 merging.

The adapter folder is a DVC output that every generate stage depends on, so its bytes must be a
function of the trained weights only. peft's ``save_pretrained`` alone is not: ``target_modules``
resolved from ``all-linear`` is a Python set (its order follows the per-process string hash), the
base model path of a tiny model points into the local cache, and it adds a boilerplate model card.
:func:`save_adapter` writes peft's own files, then canonicalises ``adapter_config.json`` (sorted
keys and module lists, the base model's *name*) and drops the card.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lpoi.config import LoraParams, ModelParams

__all__ = ["VISION_MODULES", "disable_dropout", "lora_config", "merge_adapter", "save_adapter"]

VISION_MODULES = (
    "vision_model",
    "connector",
    "vision_tower",
    "multi_modal_projector",
    "visual",
    "mm_projector",
)
"""Module names of the image side: Idefics2 ``vision_model`` + ``connector`` (perceiver), LLaVA
``vision_tower`` + ``multi_modal_projector``, Qwen-VL ``visual``, LLaVA-original ``mm_projector``."""


def lora_config(cfg: LoraParams):
    """A peft ``LoraConfig``; ``exclude_vision_tower`` keeps the image encoder and projector frozen.

    ``all-linear`` (the paper) adapts every linear layer except the LM head, image side included;
    the exclusion is a regex over ``VISION_MODULES`` (peft's ``exclude_modules``).
    """
    from peft import LoraConfig

    exclude = None
    if cfg.exclude_vision_tower:
        exclude = r".*\b(" + "|".join(VISION_MODULES) + r")\..*"
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        exclude_modules=exclude,
        bias="none",
    )


def disable_dropout(model) -> int:
    """Set every ``torch.nn.Dropout`` of ``model`` to p = 0 (TRL's ``disable_dropout_in_model``, which the
    official LPOI trainer runs); returns how many had p > 0. Attention dropout that a model applies
    functionally from its config is left alone, as TRL leaves it."""
    import torch

    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            n += 1
    return n


def save_adapter(peft_model, state_dict: dict, out: Path, *, base_name: str) -> None:
    """Write ``out`` (peft format: ``adapter_config.json`` + ``adapter_model.safetensors``) atomically.

    ``state_dict`` holds the full (gathered) LoRA tensors under the peft model's parameter names.
    """
    with _atomic_dir(out) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card: not a result
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base_name  # not the local cache folder a tiny model was built in
        for key in ("target_modules", "exclude_modules", "modules_to_save"):
            if isinstance(cfg.get(key), list):
                cfg[key] = sorted(cfg[key])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def merge_adapter(model: ModelParams, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Base model + LoRA adapter -> merged **float32** weights and the processor in ``out_dir``.

    Always in float32, whatever the training precision: added to bf16/fp16 weights, most LoRA deltas
    of a preference run (lr ~5e-6) are below half a rounding step and vanish, so a half-precision merge
    would not be the trained model. The merged folder loads with plain ``from_pretrained``.
    """
    from peft import PeftModel

    from lpoi.models import load_vlm

    base, processor = load_vlm(model.name, dtype="float32", max_pixels=model.max_pixels,
                               trust_remote_code=model.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out_dir


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh ``.<name>.tmp`` folder beside ``out`` to write into; it replaces ``out`` whole when the block
    ends without an error, so a kill or a failure leaves ``out`` as it was."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
