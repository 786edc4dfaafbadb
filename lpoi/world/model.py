"""The world's base VLM, untrained: a LLaVA-1.5-architecture model at a size that learns on a CPU.

Real transformers classes (``LlavaForConditionalGeneration``: CLIP ViT + GELU MLP projector + Llama,
``LlavaProcessor`` with a ``CLIPImageProcessor``), a byte-level BPE trained on the world's own text, so
every word of the world is one token (" Yes" and " No" included, as :func:`yes_no_token_ids` reads
them), saved and reloaded with ``save_pretrained``/``from_pretrained`` like any hub checkpoint.

Sizes (``world.model``, defaults): 48 px images in 8 px patches (36 image tokens), a 2-layer ViT of width
64, a 2-layer Llama of width 128 -- about 0.5 M parameters, ~0.2 s per training step of 32 sequences
on one CPU thread. The embedded default's ``tiny/llava`` (32 px, widths 16/32, a tokenizer that splits
the world's words) was not tried; these sizes are the first that learnt in the pilot runs recorded in
``docs/world_pilots.md``.

**The chat template** is LLaVA-1.5's turn layout with an empty generation prompt: ``"USER: <image>\\n"
+ question``, then the answer. The hub template's ``" ASSISTANT:"`` suffix puts three tokens between
the question's last word and the answer; a model this small then needs far more steps to carry the
object named in the question to the answer position (measured on the world's yes/no questions: chance
accuracy after 300 steps with the suffix, 0.9 without). Existence questions therefore end on the
object ("Is there a circle"), so the answer is predicted where that word is.
"""

from __future__ import annotations

import functools
import random

from lpoi.config import WorldModelParams
from lpoi.world.scenes import CLASSES, PALETTES, caption, make_scene

__all__ = ["BACKGROUND_TOKEN", "WORLD_TEMPLATE", "build_untrained", "build_processor", "build_tokenizer",
           "world_corpus"]

WORLD_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
    "{% else %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ ' ' + c['text'] }}"
    "{% endfor %}{% endif %}{% endfor %}"
)
BACKGROUND_TOKEN = "."
"""The patch label of image patches that show no object (pretraining's dense loss)."""
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def world_corpus(n_captions: int = 400) -> list[str]:
    """Text the tokenizer is trained on: captions, the benchmark's and verify's questions, yes/no answers."""
    from lpoi.listgen.verify import VERIFY_PROMPT
    from lpoi.world.dataset import DESCRIBE, existence_question

    lines = [f"USER: <image>\n{DESCRIBE} {caption(make_scene(0, 'tokenizer', i).objects)}" for i in range(n_captions)]
    rng = random.Random(0)
    for cls in CLASSES:
        for colour in PALETTES[cls]:
            lines.append(f"USER: <image>\n{existence_question(cls)} {rng.choice(['Yes', 'No'])} a {colour} {cls}")
    lines.append(VERIFY_PROMPT.format(question=DESCRIBE, answer="A red circle and a blue cross."))
    lines += ["USER: <image>\nIs there a circle Yes", "USER: <image>\nIs there a square No"] * 20
    return lines


@functools.lru_cache(maxsize=4)
def _trained_bpe(vocab_size: int) -> str:
    """The trained tokenizer as JSON (training is deterministic; cached so each build gets a fresh object)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(world_corpus(), trainer=trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int):
    """Byte-level BPE on :func:`world_corpus`. ``add_prefix_space`` makes "Yes" and " Yes" the same token,
    so the yes/no ids read from the tokenizer are the ones an answer after a space uses."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_bpe(vocab_size)), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    for word in [*CLASSES, *sorted({c for p in PALETTES.values() for c in p}), "Yes", "No"]:
        if len(fast.tokenize(" " + word)) != 1:
            raise RuntimeError(f"world tokenizer splits {word!r}; raise world.model.vocab_size")
    return fast


def build_processor(tok, cfg: WorldModelParams):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_proc = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                                    crop_size={"height": cfg.image_size, "width": cfg.image_size})
    from lpoi.models.chat import yes_no_token_ids

    processor = LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=cfg.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=WORLD_TEMPLATE)
    yes, no = yes_no_token_ids(processor)  # the answer tokens as the model emits them after the prompt
    if tok.convert_ids_to_tokens([yes, no]) != ["ĠYes", "ĠNo"]:
        raise RuntimeError("world tokenizer: the yes/no ids are not those of ' Yes'/' No'")
    return processor


def build_untrained(cfg: WorldModelParams, seed: int):
    """``(model, processor)``: the randomly initialised base (seeded), in train mode."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = build_tokenizer(cfg.vocab_size)
    processor = build_processor(tok, cfg)
    grid = cfg.image_size // cfg.patch_size
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=cfg.vision_hidden,
                           intermediate_size=2 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
                           num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
                           projection_dim=cfg.vision_hidden),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=cfg.text_hidden,
                         intermediate_size=2 * cfg.text_hidden, num_hidden_layers=cfg.text_layers,
                         num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # the last ViT layer: with two layers, -2 (LLaVA's) would skip half the tower
        image_seq_length=grid * grid,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tok.eos_token_id, tok.pad_token_id, tok.bos_token_id
    gc.do_sample = False
    return model, processor
