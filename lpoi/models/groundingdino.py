"""The original ``groundingdino-py`` package (IDEA's Grounding DINO): build, load, convert to/from the port.

**Sizes.** A :class:`GDinoSpec` names what shapes the network (Swin backbone, transformer, queries,
text length, input resize); :data:`VARIANTS` holds ``swint_ogc`` (``GroundingDINO_SwinT_OGC.py``, the
``groundingdino_swint_ogc.pth`` / ``IDEA-Research/grounding-dino-tiny`` weights), and the tiny offline model
of the embedded default (:mod:`lpoi.models.tiny_card`) is a smaller spec with a tiny BERT.

**Compatibility layer** (:func:`build_original`). groundingdino-py 0.4.0 targets transformers 4: its
``BertModelWarper`` calls ``BertModel.get_extended_attention_mask``/``get_head_mask``/``invert_attention_mask``,
which transformers 5 removed. The wrapper is replaced by the ``BertModel`` itself — it has the same
``embeddings``/``encoder``/``pooler`` children, so the state-dict keys (``bert.embeddings...``) do not
change, and transformers 5's ``BertModel`` takes the 3-D phrase-block attention mask directly (exactly
what transformers' own port feeds it). The package would also download ``bert-base-uncased``'s weights
just to overwrite them with the checkpoint's ``bert.*`` tensors; the BERT is built from its config
instead. Both are done by swapping two module attributes *during construction only*, under a lock.

**Weights** load from a card folder (``card.json`` ``{"format": "groundingdino", "spec": ...}``,
``model.safetensors`` in the original key names, ``text_encoder/`` = BERT config + tokenizer), from an
official ``.pth`` (``torch.load(weights_only=True)``, its ``"model"`` entry; BERT tokenizer and config from
the hub's ``bert-base-uncased``), or from a transformers checkpoint (converted with :func:`from_hf`).

**Key mapping** (:func:`to_hf`/:func:`from_hf`, written after transformers'
``convert_grounding_dino_to_hf.py``, against the module names of the installed transformers): renames
plus three fused projections split in three (Swin ``attn.qkv``; ``nn.MultiheadAttention`` ``in_proj`` of
the text enhancer and both decoder attentions). The inverse walks the same table from an original
skeleton's keys and concatenates the split tensors back. Tensors one side has and never reads (BERT's
pooler, the port's final Swin layer norm, buffers) are the only keys left unfilled, by name.

**One real difference** (issue 13): the original's ``inverse_sigmoid`` clamps at 1e-3, the port's
``torch.special.logit`` at 1e-5; only boxes touching the image border move (tests align it to compare).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from lpoi.models.keymap import apply_rules, check_keys, place, read_state_dict
from lpoi.models.keymap import is_card as _is_card

# The original package warns, on every run, about code only its maintainers can change. Each warning is
# silenced by its exact message and the module that raises it (nothing broader), here where the package
# is used, so a new warning still shows:
# - groundingdino imports `timm.models.layers`, which timm deprecated in favour of `timm.layers`;
warnings.filterwarnings("ignore", message=r"Importing from timm\.models\.layers is deprecated",
                        category=FutureWarning, module=r"timm\.models\.layers")
# - its Swin backbone and position encoding call `torch.meshgrid` without `indexing=` (the old default,
#   "ij", is what the weights were trained with);
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning,
                        module=r"torch\.functional")
# - its transformer disables autocast with the deprecated `torch.cuda.amp.autocast(enabled=False)`, which
#   warns even on a CPU run (it only ever turns autocast off, so the deprecated path does the same thing).
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
                        category=FutureWarning, module=r"groundingdino\.")

__all__ = ["CARD_FORMAT", "VARIANTS", "GDinoSpec", "build_original", "from_hf", "hf_config", "hf_processor",
           "is_card", "load_original", "load_port", "predict", "preprocess", "to_hf"]

CARD_FORMAT = "groundingdino"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class GDinoSpec:
    """Every size of a Grounding DINO (defaults: ``GroundingDINO_SwinT_OGC.py``)."""

    swin_embed_dim: int = 96
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)
    swin_num_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window_size: int = 7
    swin_pretrain_img_size: int = 224
    hidden_dim: int = 256
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    nheads: int = 8
    num_queries: int = 900
    enc_n_points: int = 4
    dec_n_points: int = 4
    max_text_len: int = 256  # tokens per prompt, [CLS] and [SEP] included
    text_encoder: str = "bert-base-uncased"  # hub id, or a folder relative to the card folder
    resize_short: int = 800  # px: RandomResize([800], max_size=1333) of groundingdino.util.inference
    resize_max: int = 1333

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> GDinoSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


VARIANTS = {"swint_ogc": GDinoSpec()}

# The rest of GroundingDINO_SwinT_OGC.py: the settings build_transformer / build_position_encoding read.
_FIXED_ARGS = dict(dropout=0.0, pre_norm=False, query_dim=4, transformer_activation="relu", num_patterns=0,
                   num_feature_levels=4, two_stage_type="standard", embed_init_tgt=True, use_text_enhancer=True,
                   use_fusion_layer=True, use_checkpoint=False, use_transformer_ckpt=False,
                   use_text_cross_attention=True, text_dropout=0.0, fusion_dropout=0.0, fusion_droppath=0.1,
                   position_embedding="sine", pe_temperatureH=20, pe_temperatureW=20)


@contextlib.contextmanager
def _compat(tokenizer, bert_config):
    """During ``GroundingDINO.__init__`` only: the BertModel is its own (transformers-5-safe) wrapper, built
    from ``bert_config`` (weights come from the checkpoint), and the tokenizer is ``tokenizer``."""
    import groundingdino.models.GroundingDINO.groundingdino as gd_module
    import groundingdino.util.get_tokenlizer as gd_tok

    with _BUILD_LOCK:  # saved inside the lock too: a concurrent build must not save (and restore) our lambdas
        bert_cls = _phrase_mask_bert()
        saved = gd_module.BertModelWarper, gd_tok.get_pretrained_language_model, gd_tok.get_tokenlizer
        gd_module.BertModelWarper = lambda bert_model: bert_model
        gd_tok.get_pretrained_language_model = lambda _name: bert_cls(bert_config)
        gd_tok.get_tokenlizer = lambda _name: tokenizer
        try:
            yield
        finally:
            gd_module.BertModelWarper, gd_tok.get_pretrained_language_model, gd_tok.get_tokenlizer = saved


_BERT_CLS = None


def _phrase_mask_bert():
    """``BertModel`` taking Grounding DINO's (B, T, T) phrase-block mask, as the port passes it: (B, 1, T, T).
    A subclass, so its state-dict keys are BertModel's."""
    global _BERT_CLS
    if _BERT_CLS is None:
        from transformers import BertModel

        class PhraseMaskBert(BertModel):
            def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **kw):
                if attention_mask is not None and attention_mask.dim() == 3:
                    attention_mask = attention_mask[:, None]
                return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids, position_ids=position_ids, **kw)

        _BERT_CLS = PhraseMaskBert
    return _BERT_CLS


def build_original(spec: GDinoSpec, tokenizer, bert_config):
    """A randomly initialised ``groundingdino`` model of this size (eval mode)."""
    if spec.hidden_dim != 256:
        raise ValueError(f"groundingdino-py runs only with hidden_dim 256 (its text position features are hard-coded "
                         f"to 256), this model has {spec.hidden_dim}: use detect.backend=transformers for it (e.g. "
                         f"tiny/grounding-dino), or tiny/groundingdino-py")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while importing and building
        from groundingdino.models.GroundingDINO.backbone.backbone import Joiner
        from groundingdino.models.GroundingDINO.backbone.position_encoding import build_position_encoding
        from groundingdino.models.GroundingDINO.backbone.swin_transformer import SwinTransformer
        from groundingdino.models.GroundingDINO.groundingdino import GroundingDINO
        from groundingdino.models.GroundingDINO.transformer import build_transformer

        args = SimpleNamespace(**_FIXED_ARGS, hidden_dim=spec.hidden_dim, nheads=spec.nheads,
                               num_queries=spec.num_queries, dim_feedforward=spec.dim_feedforward,
                               enc_layers=spec.enc_layers, dec_layers=spec.dec_layers,
                               enc_n_points=spec.enc_n_points, dec_n_points=spec.dec_n_points)
        swin = SwinTransformer(pretrain_img_size=spec.swin_pretrain_img_size, embed_dim=spec.swin_embed_dim,
                               depths=list(spec.swin_depths), num_heads=list(spec.swin_num_heads),
                               window_size=spec.swin_window_size, out_indices=(1, 2, 3), dilation=False)
        backbone = Joiner(swin, build_position_encoding(args))
        backbone.num_channels = list(swin.num_features[1:])
        with _compat(tokenizer, bert_config):
            model = GroundingDINO(
                backbone, build_transformer(args), num_queries=spec.num_queries, aux_loss=True, iter_update=True,
                query_dim=4, num_feature_levels=4, nheads=spec.nheads, dec_pred_bbox_embed_share=True,
                two_stage_type="standard", two_stage_bbox_embed_share=False, two_stage_class_embed_share=False,
                num_patterns=0, dn_number=0, dn_box_noise_scale=1.0, dn_label_noise_ratio=0.5,
                dn_labelbook_size=2000, text_encoder_type=spec.text_encoder, sub_sentence_present=True,
                max_text_len=spec.max_text_len)
    for layer in model.transformer.encoder.text_layers:
        layer.register_forward_pre_hook(_head_major_mask, with_kwargs=True)
    return model.eval()


def _head_major_mask(layer, args, kwargs):
    """Batch fix for the text-enhancer layers. ``TransformerEncoderLayer.forward`` expands the (B, T, T)
    phrase mask with ``repeat(nhead, 1, 1)`` (index ``h * B + b``), but ``nn.MultiheadAttention`` reads
    index ``b * nhead + h``: with B > 1 and different prompts each image attends with other images'
    masks (measured on the tiny model: token probabilities off by up to 0.85 against the same images
    run one by one). Handing it the mask already expanded batch-major skips that repeat; for B = 1
    nothing changes."""
    mask, src = kwargs.get("src_mask"), kwargs.get("src")
    if mask is not None and src is not None and mask.dim() == 3 and mask.shape[0] == src.shape[1] > 1 \
            and layer.nhead > 1:
        kwargs = {**kwargs, "src_mask": mask.repeat_interleave(layer.nhead, dim=0)}
    return args, kwargs


# ---------------------------------------------------------------------------------------------- key mapping

_SW = "model.backbone.conv_encoder.model.swin."
_BLK = r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\."
_ENC, _TXT, _FUS, _DEC = (r"^transformer\.encoder\.layers\.(\d+)\.", r"^transformer\.encoder\.text_layers\.(\d+)\.",
                          r"^transformer\.encoder\.fusion_layers\.(\d+)\.", r"^transformer\.decoder\.layers\.(\d+)\.")
_E, _D = r"model.encoder.layers.\1.", r"model.decoder.layers.\1."

# original key -> port key, in order (a key is rewritten by every rule that matches it, so prefixes are
# anchored and each rule consumes its own source pattern)
_RULES = [
    (r"^backbone\.0\.patch_embed\.proj\.", _SW + "embeddings.patch_embeddings.projection."),
    (r"^backbone\.0\.patch_embed\.norm\.", _SW + "embeddings.norm."),
    (_BLK + r"norm1\.", _SW + r"encoder.layers.\1.blocks.\2.layernorm_before."),
    (_BLK + r"norm2\.", _SW + r"encoder.layers.\1.blocks.\2.layernorm_after."),
    (_BLK + r"attn\.proj\.", _SW + r"encoder.layers.\1.blocks.\2.attention.o_proj."),
    (_BLK + r"attn\.relative_position_bias_table$",
     _SW + r"encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (_BLK + r"mlp\.", _SW + r"encoder.layers.\1.blocks.\2.mlp."),
    (r"^backbone\.0\.layers\.(\d+)\.downsample\.", _SW + r"encoder.layers.\1.downsample."),
    *[(rf"^backbone\.0\.norm{k}\.", f"model.backbone.conv_encoder.model.hidden_states_norms.stage{k + 1}.")
      for k in range(4)],
    (r"^bert\.", "model.text_backbone."),
    (r"^feat_map\.", "model.text_projection."),
    (r"^input_proj\.", "model.input_proj_vision."),
    (r"^transformer\.level_embed$", "model.level_embed"),
    (r"^transformer\.tgt_embed\.", "model.query_position_embeddings."),
    (r"^transformer\.enc_output(_norm)?\.", r"model.enc_output\1."),
    (r"^transformer\.enc_out_bbox_embed\.", "model.encoder_output_bbox_embed."),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layer_norm."),
    (r"^transformer\.decoder\.ref_point_head\.", "model.decoder.reference_points_head."),
    (r"^transformer\.decoder\.bbox_embed\.", "model.decoder.bbox_embed."),
    # encoder: deformable image layer, text enhancer, fusion
    (_ENC + r"self_attn\.", _E + "deformable_layer.self_attn."),
    (_ENC + r"norm1\.", _E + "deformable_layer.self_attn_layer_norm."),
    (_ENC + r"linear(\d)\.", _E + r"deformable_layer.fc\2."),
    (_ENC + r"norm2\.", _E + "deformable_layer.final_layer_norm."),
    (_TXT + r"self_attn\.out_proj\.", _E + "text_enhancer_layer.self_attn.out_proj."),
    (_TXT + r"linear(\d)\.", _E + r"text_enhancer_layer.fc\2."),
    (_TXT + r"norm1\.", _E + "text_enhancer_layer.layer_norm_before."),
    (_TXT + r"norm2\.", _E + "text_enhancer_layer.layer_norm_after."),
    (_FUS + r"gamma_v$", _E + "fusion_layer.vision_param"),
    (_FUS + r"gamma_l$", _E + "fusion_layer.text_param"),
    (_FUS + r"layer_norm_v\.", _E + "fusion_layer.layer_norm_vision."),
    (_FUS + r"layer_norm_l\.", _E + "fusion_layer.layer_norm_text."),
    (_FUS + r"attn\.(values_|out_)?v_proj\.", _E + r"fusion_layer.attn.\2vision_proj."),
    (_FUS + r"attn\.(values_|out_)?l_proj\.", _E + r"fusion_layer.attn.\2text_proj."),
    # decoder
    (_DEC + r"cross_attn\.", _D + "encoder_attn."),
    (_DEC + r"norm1\.", _D + "encoder_attn_layer_norm."),
    (_DEC + r"ca_text\.out_proj\.", _D + "encoder_attn_text.out_proj."),
    (_DEC + r"catext_norm\.", _D + "encoder_attn_text_layer_norm."),
    (_DEC + r"self_attn\.out_proj\.", _D + "self_attn.out_proj."),
    (_DEC + r"norm2\.", _D + "self_attn_layer_norm."),
    (_DEC + r"linear(\d)\.", _D + r"fc\2."),
    (_DEC + r"norm3\.", _D + "final_layer_norm."),
]
# fused projections: original key -> three port keys ({} = each name), split along dim 0 in q, k, v order
_SPLITS = [
    (_BLK + r"attn\.qkv\.(weight|bias)$", _SW + r"encoder.layers.\1.blocks.\2.attention.{}.\3",
     ("q_proj", "k_proj", "v_proj")),
    (_TXT + r"self_attn\.in_proj_(weight|bias)$", _E + r"text_enhancer_layer.self_attn.{}.\2",
     ("query", "key", "value")),
    (_DEC + r"self_attn\.in_proj_(weight|bias)$", _D + r"self_attn.{}.\2", ("query", "key", "value")),
    (_DEC + r"ca_text\.in_proj_(weight|bias)$", _D + r"encoder_attn_text.{}.\2", ("query", "key", "value")),
]
_ORIG_UNUSED = re.compile(r"(relative_position_index$|^bert\.pooler\.|position_ids$)")  # buffers; pooler unread
_PORT_UNUSED = re.compile(r"(^model\.backbone\.conv_encoder\.model\.swin\.layernorm\.|position_ids$)")


def _split(key: str):
    for pattern, template, names in _SPLITS:
        m = re.match(pattern, key)
        if m:
            return [m.expand(template.format(n)) for n in names]
    return None


def to_hf(sd: dict, target_keys) -> dict:
    """Original state dict -> ``GroundingDinoForObjectDetection`` state dict, checked against ``target_keys``."""
    out = {}
    for k, v in sd.items():
        if _ORIG_UNUSED.search(k):
            continue
        parts = _split(k)
        if parts:
            out.update(zip(parts, v.chunk(3, dim=0)))
        else:
            out[apply_rules(k, _RULES)] = v
    check_keys(out, target_keys, "groundingdino -> transformers", may_miss=lambda k: bool(_PORT_UNUSED.search(k)))
    return out


def from_hf(hf_sd: dict, orig_keys) -> dict:
    """Port state dict -> original state dict for a model whose keys are ``orig_keys``."""
    import torch

    out = {}
    for k in orig_keys:
        if _ORIG_UNUSED.search(k):
            continue
        parts = _split(k)
        try:
            out[k] = torch.cat([hf_sd[p] for p in parts]) if parts else hf_sd[apply_rules(k, _RULES)]
        except KeyError as e:
            raise KeyError(f"transformers -> groundingdino: key mapping incomplete: no {e} for {k!r}") from None
    return out


# ---------------------------------------------------------------------------------------------- configs


def hf_config(spec: GDinoSpec, bert_config):
    """The ``GroundingDinoConfig`` of the same network (text config = the BERT's)."""
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig(
        backbone_config=dict(model_type="swin", image_size=spec.swin_pretrain_img_size, patch_size=4,
                             embed_dim=spec.swin_embed_dim, depths=list(spec.swin_depths),
                             num_heads=list(spec.swin_num_heads), window_size=spec.swin_window_size,
                             out_features=["stage2", "stage3", "stage4"]),
        text_config=bert_config.to_dict(), d_model=spec.hidden_dim, encoder_layers=spec.enc_layers,
        decoder_layers=spec.dec_layers, encoder_ffn_dim=spec.dim_feedforward, decoder_ffn_dim=spec.dim_feedforward,
        encoder_attention_heads=spec.nheads, decoder_attention_heads=spec.nheads, encoder_n_points=spec.enc_n_points,
        decoder_n_points=spec.dec_n_points, num_queries=spec.num_queries, max_text_len=spec.max_text_len,
        num_feature_levels=4)


def spec_from_hf_config(cfg, image_processor=None) -> GDinoSpec:
    b = cfg.backbone_config
    size = getattr(image_processor, "size", None) or {}
    return GDinoSpec(
        swin_embed_dim=b.embed_dim, swin_depths=tuple(b.depths), swin_num_heads=tuple(b.num_heads),
        swin_window_size=b.window_size, swin_pretrain_img_size=b.image_size, hidden_dim=cfg.d_model,
        enc_layers=cfg.encoder_layers, dec_layers=cfg.decoder_layers, dim_feedforward=cfg.encoder_ffn_dim,
        nheads=cfg.encoder_attention_heads, num_queries=cfg.num_queries, enc_n_points=cfg.encoder_n_points,
        dec_n_points=cfg.decoder_n_points, max_text_len=cfg.max_text_len,
        resize_short=int(size.get("shortest_edge", 800)), resize_max=int(size.get("longest_edge", 1333)))


def hf_processor(spec: GDinoSpec, tokenizer):
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    return GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": spec.resize_short,
                                                          "longest_edge": spec.resize_max}),
        tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------- loading


def is_card(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds weights in the original package's format (file or card folder)."""
    return _is_card(path, CARD_FORMAT)


def _text_encoder(spec: GDinoSpec, root: Path | None):
    """(tokenizer, BertConfig): a folder next to the card, or a hub id (only config + vocab are fetched)."""
    from transformers import AutoTokenizer, BertConfig

    from lpoi.models import _from_pretrained

    where = str(root / spec.text_encoder) if root is not None and (root / spec.text_encoder).is_dir() \
        else spec.text_encoder
    tok = _from_pretrained(AutoTokenizer, where, "Grounding DINO text-encoder tokenizer")
    return tok, _from_pretrained(BertConfig, where, "Grounding DINO text-encoder config")


def _read_card(path: Path):
    """(original state dict, spec, tokenizer, BertConfig) of a card folder or an official checkpoint file."""
    if path.is_file():
        sd = read_state_dict(path, unwrap="model")
        spec = _spec_from_state_dict(sd)
        return (sd, spec, *_text_encoder(spec, None))
    card = json.loads((path / "card.json").read_text())
    spec = GDinoSpec.from_json(card["spec"])
    return (read_state_dict(path / "model.safetensors"), spec, *_text_encoder(spec, path))


def _spec_from_state_dict(sd: dict) -> GDinoSpec:
    if "backbone.0.patch_embed.proj.weight" not in sd:
        raise ValueError("not a Grounding DINO state dict (no backbone.0.patch_embed.proj.weight)")
    dim = int(sd["backbone.0.patch_embed.proj.weight"].shape[0])
    for spec in VARIANTS.values():
        if spec.swin_embed_dim == dim:
            return spec
    raise ValueError(f"unknown Grounding DINO variant (Swin width {dim}); known: {', '.join(VARIANTS)}")


@dataclass
class Original:
    """A loaded original model with what its inference needs."""

    model: object
    spec: GDinoSpec
    tokenizer: object  # the encoder's own tokenizer instance (the model keeps another for its forward)
    max_text_len: int = field(init=False)

    def __post_init__(self):
        # the original truncates at 256 tokens; a small BERT holds fewer positions
        self.max_text_len = min(self.spec.max_text_len, int(self.model.bert.config.max_position_embeddings))


def load_original(path: str, dtype=None, device: str | None = None) -> Original:
    """The original model from a card folder/file or a transformers checkpoint (converted with :func:`from_hf`)."""
    import copy

    p = Path(path)
    if is_card(p):
        sd, spec, tok, bert_cfg = _read_card(p)
    else:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        from lpoi.models import _from_pretrained

        hf = _from_pretrained(GroundingDinoForObjectDetection, path, "detector")
        proc = _from_pretrained(AutoProcessor, path, "detector processor")
        spec, tok, bert_cfg = spec_from_hf_config(hf.config, proc.image_processor), proc.tokenizer, hf.config.text_config
        sd = None
    model = build_original(spec, copy.deepcopy(tok), bert_cfg)
    if sd is None:
        sd = from_hf(hf.state_dict(), model.state_dict().keys())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not _ORIG_UNUSED.search(k)]
    if bad or unexpected:
        raise KeyError(f"{path}: groundingdino state dict does not fit: missing {bad[:4]}, unexpected {unexpected[:4]}")
    return Original(place(model, dtype, device), spec, tok)


def load_port(path: str, dtype=None, device: str | None = None):
    """(``GroundingDinoForObjectDetection``, ``GroundingDinoProcessor``) from a card folder/file (:func:`to_hf`)."""
    from transformers import GroundingDinoForObjectDetection

    sd, spec, tok, bert_cfg = _read_card(Path(path))
    model = GroundingDinoForObjectDetection(hf_config(spec, bert_cfg))
    hf_sd = to_hf(sd, model.state_dict().keys())
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    bad = [k for k in missing if not _PORT_UNUSED.search(k)]
    if bad or unexpected:
        raise KeyError(f"{path}: converted state dict does not fit the port: missing {bad[:4]}, "
                       f"unexpected {unexpected[:4]}")
    return place(model, dtype, device), hf_processor(spec, tok)


# ---------------------------------------------------------------------------------------------- inference


def preprocess(spec: GDinoSpec, images: list):
    """``groundingdino.util.inference.load_image``'s transform per PIL image, padded into one batch:
    ``(pixels (B, 3, H, W) float32, padding mask (B, H, W) bool, True = padding)``."""
    import groundingdino.datasets.transforms as T
    from groundingdino.util.misc import nested_tensor_from_tensor_list

    tf = T.Compose([T.RandomResize([spec.resize_short], max_size=spec.resize_max), T.ToTensor(),
                    T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])
    nt = nested_tensor_from_tensor_list([tf(im.convert("RGB"), None)[0] for im in images])
    return nt.tensors, nt.mask


def predict(model, pixels, mask, captions: list[str], autocast=None):
    """``(sigmoid probabilities (B, Q, 256) — padding columns 0, boxes (B, Q, 4) normalised cx, cy, w, h)``.

    ``autocast``: a torch dtype (bfloat16/float16) to run in under ``torch.autocast``, the weights staying
    float32 — the package mixes float32 buffers into its ops, so casting the weights themselves fails."""
    import contextlib

    import torch
    from groundingdino.util.misc import NestedTensor

    p0 = next(model.parameters())
    amp = torch.autocast(p0.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        out = model(NestedTensor(pixels.to(p0.device, p0.dtype), mask.to(p0.device)), captions=captions)
    return torch.sigmoid(out["pred_logits"].float()).cpu(), out["pred_boxes"].float().cpu()
