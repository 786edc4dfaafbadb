"""Resolve a model name and load it: ``tiny/<family>`` (built offline) or a hub id / local path.

Hub names go through ``from_pretrained`` unchanged, so ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``
apply as usual; weights load from safetensors and ``trust_remote_code`` stays off unless the caller
asks for it explicitly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .identity import model_digest, model_identity

# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on every PeftModel it builds around
# a model loaded here: a FutureWarning (raised in transformers.modeling_utils) in every train and generate
# stage that nobody running the pipeline can act on. Silenced by its message and raising module only.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils")

__all__ = [
    "ModelNotFound",
    "load_causal_lm",
    "load_detector",
    "load_processor",
    "load_segmenter",
    "load_vlm",
    "model_digest",
    "model_identity",
    "resolve",
    "torch_dtype",
]


class ModelNotFound(RuntimeError):
    """The weights for a model name are neither in a local folder nor in the hub cache (and cannot be fetched)."""


def resolve(name: str, seed: int = 0) -> str:
    """Local folder of ``tiny/<family>`` (building it on first use), or ``name`` itself for hub ids and paths."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith("tiny/"):
        from .tiny import tiny_path

        return str(tiny_path(name.removeprefix("tiny/"), seed=seed))
    return name


def torch_dtype(name: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]


def _from_pretrained(loader, name: str, what: str, **kw):
    path = resolve(name)
    _quiet_transformers()
    try:
        return loader.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        if Path(path).exists():
            raise
        import huggingface_hub.constants as hub_constants

        offline = hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded: fetch it first on a machine with internet "
            f"(`huggingface-cli download {name}`) into HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}"
            if offline
            else "check the name, your network and HF_TOKEN for gated models, or pass a local folder"
        )
        detail = " ".join(str(e).split())  # transformers' messages span lines: the stage prints one
        raise ModelNotFound(f"cannot load {what} {name!r}: {type(e).__name__}: {detail} -> {hint}") from None


LOADING_BARS = ("Loading weights", "Loading checkpoint shards")
"""transformers' bars while it reads weights already on disk: one per model loaded (seven in a ``dvc repro``),
each gone in a second. Hidden unless ``LPOI_VERBOSE=1``; download bars (huggingface_hub's) stay."""


def _hide_loading_bars(factory, args, kwargs):
    if kwargs.get("desc") in LOADING_BARS and os.environ.get("LPOI_VERBOSE", "") in ("", "0"):
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def _quiet_transformers() -> None:
    # The PIL image-processor fallback warns once per class when torchvision is absent; the outputs are
    # the same, so keep stage logs readable.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.set_tqdm_hook(_hide_loading_bars)


def load_processor(name: str, max_pixels: int | None = None, **kw):
    """The processor of ``name``; ``max_pixels`` bounds a dynamic-resolution image processor
    (``model.max_pixels``, see :func:`lpoi.models.chat.apply_resolution_budget`)."""
    from transformers import AutoProcessor

    from lpoi.models.chat import apply_resolution_budget

    _quiet_transformers()
    return apply_resolution_budget(_from_pretrained(AutoProcessor, name, "processor", **kw), max_pixels)


def _load_with_processor(loader, name: str, what: str, dtype: str, device: str | None,
                         trust_remote_code: bool = False, max_pixels: int | None = None, **kw):
    _quiet_transformers()
    model = _from_pretrained(loader, name, what, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **kw)
    processor = load_processor(name, max_pixels=max_pixels, trust_remote_code=trust_remote_code)
    if device:
        model.to(device)
    return model.eval(), processor


def load_vlm(name: str, dtype: str = "float32", device: str | None = None, trust_remote_code: bool = False,
             attn_implementation: str | None = None, max_pixels: int | None = None):
    """(model, processor) for any image-text-to-text model (Idefics2, LLaVA-1.5, Qwen2.5-VL, Qwen3-VL,
    Gemma 3, SmolVLM, ...), in eval mode; ``max_pixels`` as in :func:`load_processor`."""
    from transformers import AutoModelForImageTextToText

    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return _load_with_processor(AutoModelForImageTextToText, name, "vision-language model", dtype, device,
                                trust_remote_code=trust_remote_code, max_pixels=max_pixels, **kw)


def load_causal_lm(name: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) for a text-only causal LM (the offline judge)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    model = _from_pretrained(AutoModelForCausalLM, name, "causal LM", dtype=torch_dtype(dtype))
    tok = _from_pretrained(AutoTokenizer, name, "tokenizer")
    if device:
        model.to(device)
    return model.eval(), tok


def load_detector(name: str, dtype: str = "float32", device: str | None = None):
    """(model, processor) of transformers' Grounding DINO (``IDEA-Research/grounding-dino-tiny``,
    ``tiny/grounding-dino``); original-format weights (``tiny/groundingdino-py``, ``groundingdino_swint_ogc.pth``)
    are converted (:func:`lpoi.models.groundingdino.load_port`)."""
    from . import groundingdino

    if groundingdino.is_card(resolve(name)):
        _quiet_transformers()
        return groundingdino.load_port(resolve(name), dtype=torch_dtype(dtype), device=device)
    from transformers import AutoModelForZeroShotObjectDetection

    return _load_with_processor(AutoModelForZeroShotObjectDetection, name, "detector", dtype, device)


def load_segmenter(name: str, dtype: str = "float32", device: str | None = None):
    """(model, processor) of transformers' SAM (``facebook/sam-vit-base``/``-huge``, ``tiny/sam``);
    original-format weights (``tiny/segment-anything``, ``sam_vit_b_01ec64.pth``) are converted
    (:func:`lpoi.models.sam.load_port`)."""
    from . import sam

    if sam.is_card(resolve(name)):
        return sam.load_port(resolve(name), dtype=torch_dtype(dtype), device=device)
    from transformers import SamModel

    return _load_with_processor(SamModel, name, "segmenter", dtype, device)
