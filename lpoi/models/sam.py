"""The original ``segment-anything`` package (Meta's SAM): build, load, convert to/from transformers' port.

**Sizes.** A :class:`SamSpec` names everything that shapes the network; :data:`VARIANTS` holds the three
official ones (``vit_b``/``vit_l``/``vit_h``, as in ``segment_anything.build_sam``), and the tiny
offline model of the embedded default (:mod:`lpoi.models.tiny_card`) is just a smaller spec.

**Where weights come from** (:func:`load_original`, :func:`load_port`):

* an official checkpoint (``sam_vit_b_01ec64.pth`` ...): read with ``torch.load(weights_only=True)``
  (:func:`lpoi.models.keymap.read_state_dict`), the variant inferred from the tensor shapes;
* a *card folder* — ``card.json`` (``{"format": "segment-anything", "spec": {...}}``) plus
  ``model.safetensors`` in the original key names (``tiny/segment-anything`` is one);
* a transformers checkpoint (``facebook/sam-vit-base``, a ``save_pretrained`` folder).

Either format loads into either implementation through the key mapping below (:func:`to_hf` and
:func:`from_hf`, written after transformers' ``convert_sam_to_hf.py``): the renames are one-to-one
(no tensor is split), so the inverse is the same table read backwards, and both directions are checked
to fill every key of the target model (:func:`lpoi.models.keymap.check_keys`).

**Inference** (:func:`preprocess`, :func:`predict`) follows ``SamPredictor``: resize the longest side to
``image_size`` (``ResizeLongestSide``, PIL bilinear), normalise, pad to a square; one image-encoder call per
batch, then per image one prompt-encoder + mask-decoder call for all its boxes, multimask output, the
best proposal by predicted IoU, and only that one upsampled (``Sam.postprocess_masks``) and thresholded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lpoi.models.keymap import apply_rules, check_keys, place, read_state_dict
from lpoi.models.keymap import is_card as _is_card

__all__ = ["CARD_FORMAT", "VARIANTS", "SamSpec", "build_original", "from_hf", "hf_config", "hf_processor",
           "is_card", "load_original", "load_port", "predict", "preprocess", "select_best_masks", "spec_from_state_dict",
           "to_hf"]

CARD_FORMAT = "segment-anything"
PIXEL_MEAN = (123.675, 116.28, 103.53)  # segment_anything.build_sam: ImageNet statistics on 0-255
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamSpec:
    """Every size of a SAM network (defaults: the official prompt encoder and mask decoder)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024  # px, the longest side after resizing (inputs are padded to a square)
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SamSpec:
        return cls(**{**d, "global_attn_indexes": tuple(d["global_attn_indexes"])})


VARIANTS = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
}


def build_original(spec: SamSpec):
    """A randomly initialised ``segment_anything.modeling.Sam`` of this size, in eval mode."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = spec.image_size // spec.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth, embed_dim=spec.embed_dim, img_size=spec.image_size, mlp_ratio=spec.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.num_heads, patch_size=spec.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(spec.global_attn_indexes),
            window_size=spec.window_size, out_chans=spec.prompt_embed_dim),
        prompt_encoder=PromptEncoder(embed_dim=spec.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(spec.image_size, spec.image_size),
                                     mask_in_chans=spec.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=spec.decoder_depth, embedding_dim=spec.prompt_embed_dim,
                                          mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_num_heads),
            transformer_dim=spec.prompt_embed_dim, iou_head_depth=spec.iou_head_depth,
            iou_head_hidden_dim=spec.iou_head_hidden_dim),
        pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def spec_from_state_dict(sd: dict) -> SamSpec:
    """The official variant whose shapes these tensors have (the file name is not trusted)."""
    try:
        dim = int(sd["image_encoder.patch_embed.proj.weight"].shape[0])
    except KeyError:
        raise ValueError("not a segment-anything state dict (no image_encoder.patch_embed.proj.weight)") from None
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    for name, spec in VARIANTS.items():
        if (spec.embed_dim, spec.depth) == (dim, depth):
            return spec
    raise ValueError(f"unknown SAM variant: image encoder width {dim}, {depth} blocks "
                     f"(known: {', '.join(f'{n} {s.embed_dim}x{s.depth}' for n, s in VARIANTS.items())})")


# ---------------------------------------------------------------------------------------------- transformers


def hf_config(spec: SamSpec):
    """The ``SamConfig`` of the same network."""
    from transformers import SamConfig

    return SamConfig(
        vision_config=dict(hidden_size=spec.embed_dim, output_channels=spec.prompt_embed_dim,
                           num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
                           image_size=spec.image_size, patch_size=spec.patch_size, window_size=spec.window_size,
                           global_attn_indexes=list(spec.global_attn_indexes), mlp_ratio=spec.mlp_ratio,
                           num_pos_feats=spec.prompt_embed_dim // 2),
        prompt_encoder_config=dict(hidden_size=spec.prompt_embed_dim, image_size=spec.image_size,
                                   patch_size=spec.patch_size, mask_input_channels=spec.mask_in_chans),
        mask_decoder_config=dict(hidden_size=spec.prompt_embed_dim, mlp_dim=spec.decoder_mlp_dim,
                                 num_hidden_layers=spec.decoder_depth, num_attention_heads=spec.decoder_num_heads,
                                 iou_head_depth=spec.iou_head_depth, iou_head_hidden_dim=spec.iou_head_hidden_dim),
    )


def spec_from_hf_config(cfg) -> SamSpec:
    v, p, m = cfg.vision_config, cfg.prompt_encoder_config, cfg.mask_decoder_config
    return SamSpec(embed_dim=v.hidden_size, depth=v.num_hidden_layers, num_heads=v.num_attention_heads,
                   global_attn_indexes=tuple(v.global_attn_indexes), image_size=v.image_size, patch_size=v.patch_size,
                   window_size=v.window_size, mlp_ratio=v.mlp_dim / v.hidden_size, prompt_embed_dim=p.hidden_size,
                   mask_in_chans=p.mask_input_channels, decoder_depth=m.num_hidden_layers, decoder_mlp_dim=m.mlp_dim,
                   decoder_num_heads=m.num_attention_heads, iou_head_depth=m.iou_head_depth,
                   iou_head_hidden_dim=m.iou_head_hidden_dim)


def hf_processor(spec: SamSpec):
    """``SamProcessor`` resizing to the spec's input size (the official defaults for 1024 px)."""
    from transformers import SamImageProcessor, SamProcessor

    s, low = spec.image_size, 4 * (spec.image_size // spec.patch_size)  # low-res masks: 4x the embedding grid
    return SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": s}, pad_size={"height": s, "width": s}, mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low}))


def _mlp_rules(prefix: str, depth: int) -> list[tuple[str, str]]:
    # segment-anything's MLP is layers.0..d-1; the port names them proj_in, layers.0..d-3, proj_out
    rules = [(rf"^({prefix})\.layers\.0\.", r"\1.proj_in."), (rf"^({prefix})\.layers\.{depth - 1}\.", r"\1.proj_out.")]
    rules += [(rf"^({prefix})\.layers\.{i}\.", rf"\1.layers.{i - 1}.") for i in range(1, depth - 1)]
    return rules


def _rules(spec: SamSpec) -> list[tuple[str, str]]:
    """Original key -> transformers key, applied in order (after ``convert_sam_to_hf.py``'s table)."""
    return [
        (r"^image_encoder\.", "vision_encoder."),
        (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
        (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
        (r"\.neck\.0\.", ".neck.conv1."), (r"\.neck\.1\.", ".neck.layer_norm1."),
        (r"\.neck\.2\.", ".neck.conv2."), (r"\.neck\.3\.", ".neck.layer_norm2."),
        (r"\.norm(\d|_final_attn)", r".layer_norm\1"),
        (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
        (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
        (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
        *_mlp_rules(r"mask_decoder\.iou_prediction_head", spec.iou_head_depth),
        *_mlp_rules(r"mask_decoder\.output_hypernetworks_mlps\.\d+", 3),
        (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
        (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
        (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
        (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
        (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
        (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
        (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
         "prompt_encoder.shared_embedding.positional_embedding"),
    ]


_SHARED = ("prompt_encoder.shared_embedding.positional_embedding", "shared_image_embedding.positional_embedding")


def to_hf(sd: dict, spec: SamSpec, target_keys=None) -> dict:
    """Original state dict -> ``SamModel`` state dict (checked against ``target_keys`` when given)."""
    rules = _rules(spec)
    out = {apply_rules(k, rules): v for k, v in sd.items() if k not in ("pixel_mean", "pixel_std")}
    out[_SHARED[1]] = out[_SHARED[0]]  # the port keeps the random Fourier matrix twice
    if target_keys is not None:
        check_keys(out, target_keys, "segment-anything -> transformers")
    return out


def from_hf(hf_sd: dict, spec: SamSpec) -> dict:
    """``SamModel`` state dict -> original state dict: the same table, read backwards."""
    rules = _rules(spec)
    names = list(build_original_keys(spec))
    back = {apply_rules(k, rules): k for k in names}
    check_keys(back, set(hf_sd) - {_SHARED[1]}, "transformers -> segment-anything")
    return {back[k]: v for k, v in hf_sd.items() if k != _SHARED[1]}


def build_original_keys(spec: SamSpec) -> list[str]:
    """The state-dict keys of an original model of this size (built on the meta device: no memory)."""
    import torch

    with torch.device("meta"):
        return list(build_original(spec).state_dict())


# ---------------------------------------------------------------------------------------------- loading


def is_card(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds weights in the original package's format (file or card folder)."""
    return _is_card(path, CARD_FORMAT)


def _read_card(path: Path) -> tuple[dict, SamSpec]:
    if path.is_file():
        sd = read_state_dict(path)
        return sd, spec_from_state_dict(sd)
    card = json.loads((path / "card.json").read_text())
    return read_state_dict(path / "model.safetensors"), SamSpec.from_json(card["spec"])


def load_original(path: str, dtype=None, device: str | None = None):
    """(``Sam`` in eval mode, its spec) from a card file/folder, or from a transformers checkpoint
    (converted with :func:`from_hf`)."""
    p = Path(path)
    if is_card(p):
        sd, spec = _read_card(p)
    else:
        from transformers import SamModel

        from lpoi.models import _from_pretrained

        hf = _from_pretrained(SamModel, path, "segmenter")  # a missing hub model: ModelNotFound with the fix
        spec = spec_from_hf_config(hf.config)
        sd = from_hf(hf.state_dict(), spec)
    model = build_original(spec)
    model.load_state_dict(sd, strict=True)
    return place(model, dtype, device), spec


def load_port(path: str, dtype=None, device: str | None = None):
    """(``SamModel``, ``SamProcessor``) built from a card file/folder (converted with :func:`to_hf`)."""
    from transformers import SamModel

    sd, spec = _read_card(Path(path))
    model = SamModel(hf_config(spec))
    hf_sd = to_hf(sd, spec, target_keys=model.state_dict().keys())
    model.load_state_dict(hf_sd, strict=True)
    return place(model, dtype, device), hf_processor(spec)


# ---------------------------------------------------------------------------------------------- inference


@dataclass
class Prepared:
    """One image ready for :func:`predict` (CPU tensors)."""

    pixels: object  # (3, S, S) float32: normalised, padded
    input_size: tuple[int, int]  # (h, w) after resizing, before padding
    original_size: tuple[int, int]  # (H, W)
    boxes: object = field(default=None)  # (N, 4) float32 in the resized frame


def preprocess(spec: SamSpec, image, boxes) -> Prepared:
    """``SamPredictor.set_image`` + ``ResizeLongestSide.apply_boxes`` for one PIL image and its boxes, without
    the model (so it can run in a prefetch thread)."""
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    t = ResizeLongestSide(spec.image_size)
    arr = np.asarray(image.convert("RGB"))
    small = t.apply_image(arr)
    x = torch.as_tensor(small).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[:, None, None]
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, spec.image_size - w, 0, spec.image_size - h))
    b = torch.as_tensor(t.apply_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), arr.shape[:2]),
                        dtype=torch.float32)
    return Prepared(x, (int(h), int(w)), tuple(arr.shape[:2]), b)


def select_best_masks(masks, iou):
    """Per box, the multimask output with the highest predicted IoU.

    ``masks``: (N, M, ...) — M proposals per box (any trailing shape); ``iou``: (N, M).
    Returns ``(masks[n, argmax_m iou[n]] -> (N, ...), best iou (N,))``; ties go to the lowest m.
    Works on numpy arrays and torch tensors alike; shared by the original package and the transformers
    port (:mod:`lpoi.listgen.segment`).
    """
    import torch

    is_np = isinstance(masks, np.ndarray)
    m, s = torch.as_tensor(masks), torch.as_tensor(iou)
    if s.ndim != 2 or m.shape[:2] != s.shape:
        raise ValueError(f"masks must be (N, M, ...) and iou (N, M); got {tuple(m.shape)} and {tuple(s.shape)}")
    best = torch.argmax(s, dim=1)  # first maximum on ties
    idx = torch.arange(s.shape[0], device=s.device)
    out_m, out_s = m[idx, best.to(m.device)], s[idx, best]
    return (out_m.numpy(), out_s.numpy()) if is_np else (out_m, out_s)


def predict(model, prepared: list[Prepared], autocast=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image ``(masks bool (N, H, W), best predicted IoU (N,))`` for its boxes (see the module doc).
    ``autocast``: as in :func:`lpoi.models.groundingdino.predict` (the package cannot run on cast weights)."""
    import contextlib

    import torch

    if not prepared:
        return []
    p0 = next(model.parameters())
    out = []
    amp = torch.autocast(p0.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        emb = model.image_encoder(torch.stack([p.pixels for p in prepared]).to(p0.device, p0.dtype))
        pe = model.prompt_encoder.get_dense_pe()
        for j, p in enumerate(prepared):
            sparse, dense = model.prompt_encoder(points=None, boxes=p.boxes.to(p0.device, p0.dtype), masks=None)
            low, iou = model.mask_decoder(image_embeddings=emb[j:j + 1], image_pe=pe, sparse_prompt_embeddings=sparse,
                                          dense_prompt_embeddings=dense, multimask_output=True)
            best, score = select_best_masks(low.float(), iou.float())
            up = model.postprocess_masks(best[:, None], p.input_size, p.original_size)[:, 0] > model.mask_threshold
            out.append((up.cpu().numpy(), score.cpu().numpy().astype(np.float32)))
    return out
