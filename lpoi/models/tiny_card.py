"""Tiny offline models of the two original packages the design card names, for the embedded default.

``tiny/groundingdino-py`` and ``tiny/segment-anything`` are the *original* networks
(``groundingdino.models.GroundingDINO.GroundingDINO``, ``segment_anything.modeling.Sam``) at a tiny size,
randomly initialised by the packages' own code under a fixed seed, and saved as a *card folder*:
``card.json`` (format + :class:`~lpoi.models.groundingdino.GDinoSpec` / :class:`~lpoi.models.sam.SamSpec`)
and ``model.safetensors`` in the original key names; Grounding DINO adds ``text_encoder/`` (a tiny BERT
config and the BERT-uncased-shaped WordPiece tokenizer of :mod:`lpoi.models.tiny`, with [CLS]/[SEP]/./?
at BERT's ids, which the port hard-codes). Either backend loads either folder (the transformers one
through the key mapping), so ``-S detect.backend=transformers`` runs the *same weights* in the port.

Grounding DINO keeps ``hidden_dim=256``: the original hard-codes 256 sine features for the text
positions (``transformer.py``: ``get_sine_pos_embed(..., num_pos_feats=256)``), so a narrower model does
not run; everything else is small (Swin width 8, one encoder and two decoder layers, 16 queries).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["CARD_BUILDERS", "TINY_GDINO", "TINY_SAM", "card_source_digest"]

TINY_SAM = dict(embed_dim=16, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=64, patch_size=8,
                window_size=4, prompt_embed_dim=16, mask_in_chans=4, decoder_mlp_dim=32, decoder_num_heads=2,
                iou_head_hidden_dim=16)
TINY_GDINO = dict(swin_embed_dim=8, swin_depths=(1, 1, 1, 1), swin_num_heads=(1, 1, 2, 2), swin_window_size=4,
                  swin_pretrain_img_size=64, hidden_dim=256, enc_layers=1, dec_layers=2, dim_feedforward=64,
                  nheads=8, num_queries=16, enc_n_points=2, dec_n_points=2, max_text_len=64,
                  text_encoder="text_encoder", resize_short=80, resize_max=120)  # >= 80 px: see tiny.py's note
TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=64)


def _save(model, dest: Path, fmt: str, spec) -> None:
    from safetensors.torch import save_file

    # tied modules (Grounding DINO's shared box head) appear under several keys: save each as its own copy,
    # so the file is a plain, complete state dict
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(dest / "model.safetensors"))
    (dest / "card.json").write_text(json.dumps({"format": fmt, "spec": spec.to_json()}, indent=1))


def build_tiny_sam(dest: Path, seed: int) -> None:
    import torch

    from lpoi.models import sam

    spec = sam.SamSpec(**TINY_SAM)
    torch.manual_seed(seed)
    _save(sam.build_original(spec), dest, sam.CARD_FORMAT, spec)


def build_tiny_groundingdino(dest: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig

    from lpoi.models import groundingdino as gd
    from lpoi.models.tiny import _bert_wordpiece, _corpus_words

    tok = _bert_wordpiece(_corpus_words())
    bert = BertConfig(vocab_size=len(tok), **TINY_BERT)
    (dest / "text_encoder").mkdir()
    tok.save_pretrained(dest / "text_encoder")
    bert.save_pretrained(dest / "text_encoder")
    spec = gd.GDinoSpec.from_json(TINY_GDINO)
    torch.manual_seed(seed)
    _save(gd.build_original(spec, tok, bert), dest, gd.CARD_FORMAT, spec)


CARD_BUILDERS = {"groundingdino-py": build_tiny_groundingdino, "segment-anything": build_tiny_sam}


def card_source_digest() -> str:
    """Hash of the code behind these weights (this file and the two builders' modules): part of the tiny
    cache key, so editing a spec or a builder never serves a stale model."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("tiny_card.py", "sam.py", "groundingdino.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:8]
