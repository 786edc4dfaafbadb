"""Tiny real models, built offline from configs, for the embedded default and the tests.

Each ``tiny/<family>`` name builds the *real* transformers class (Idefics2, LLaVA, Qwen2.5-VL, Qwen3-VL,
Gemma 3, SmolVLM (Idefics3), Grounding DINO, SAM, Llama) at a tiny size with a fixed seed, a tokenizer trained locally with ``tokenizers`` on a
built-in corpus (with the family's special tokens and chat template), and the family's processor.
It is saved once with ``save_pretrained`` (safetensors) into a cache folder and from then on loaded
with ``from_pretrained`` exactly like a hub checkpoint, so the code path the paper profiles use is the
one the tests exercise. Same seed and same code -> identical weights (tested).

The weights are random: whatever these models output is meaningless, and metrics computed from
them only prove the pipeline runs end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from lpoi.models.tiny_card import CARD_BUILDERS, card_source_digest

VLM_FAMILIES = ("idefics2", "llava", "qwen2.5-vl", "qwen3-vl", "gemma3", "smolvlm")
"""The tiny vision-language models, one per supported family (the per-family tests run over all of them)."""
TINY_FAMILIES = (*VLM_FAMILIES, "grounding-dino", "sam", "llama", *CARD_BUILDERS)
TINY_VERSION = "1"  # bump when a builder changes, so stale caches are rebuilt

# Built-in corpus for the tokenizers: the words the sample data, the prompts and the benchmarks use
# often, so that BPE merges whole words (and "Yes"/"No" are single tokens, see `yes_no_token_ids`).
_CORPUS = """
Yes No yes no Yes. No. Yes, No, Answer yes or no. Is there a in this image? Describe this image.
The image shows a red car parked next to a tree. There is a dog sitting on the grass near a bench.
A cat is sleeping on a sofa. A man is riding a bicycle on the street. Two people are standing near
a bus. A woman holds an umbrella. The table has a cup, a bottle, a plate, a fork and a knife.
A clock hangs on the wall above a chair. A boat floats on the water under a blue sky with clouds.
A bird sits on a fence. A horse runs in a field. A child plays with a ball. A laptop and a phone are
on the desk. A train passes by a building. A pizza, a sandwich, an apple, a banana and an orange.
A traffic light, a stop sign, a fire hydrant and a parking meter. The kite flies high. A sheep, a cow,
an elephant, a bear, a zebra and a giraffe. A backpack, a handbag, a tie and a suitcase. A frisbee,
skis, a snowboard, a sports ball, a baseball bat, a skateboard, a surfboard, a tennis racket.
A wine glass, a bowl, broccoli, a carrot, a hot dog, a donut, a cake. A couch, a potted plant, a bed,
a dining table, a toilet, a tv, a mouse, a remote, a keyboard, a microwave, an oven, a toaster,
a sink, a refrigerator, a book, a vase, scissors, a teddy bear, a hair drier, a toothbrush.
square circle triangle star heart shape shapes colored blue green yellow purple orange white black
gray brown pink small large big left right top bottom middle center corner background foreground
What color is the object? How many objects are there? What is in the picture? Where is it?
The answer is correct. The answer is incorrect. Please describe the image in detail.
User Assistant USER ASSISTANT system Question Answer rating score
"""

_IDEFICS2_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)  # HuggingFaceM4/idefics2-8b's template
_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)  # llava-hf/llava-1.5-7b-hf's template
# Qwen/Qwen2.5-VL-7B-Instruct's template (its default system turn included).
_QWEN25_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
# Qwen/Qwen3-VL-8B-Instruct's template without its tool-call branches (no system turn unless given).
_QWEN3_VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{%- if messages[0].content is string %}"
    "{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\n' }}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}Picture {{ image_count.value }}: "
    "{%- endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {%- endif -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content_item in message.content %}"
    "{%- if 'text' in content_item %}{{- content_item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- endif %}"
)
# google/gemma-3-4b-it's template: it renders <bos> itself, and the assistant role is "model".
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- else -%}{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}"
    "{%- endif -%}"
)
# HuggingFaceTB/SmolVLM-Instruct's template (Idefics2's, opened with <|im_start|>).
_SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_LLAMA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def cache_root() -> Path:
    """Where built tiny models live: ``$LPOI_CACHE`` or ``~/.cache/lpoi``."""
    return Path(os.environ.get("LPOI_CACHE") or Path.home() / ".cache" / "lpoi") / "tiny"


def tiny_path(family: str, seed: int = 0) -> Path:
    """Build ``tiny/<family>`` once (atomically, safe under concurrent builders) and return its folder."""
    dest = tiny_dest(family, seed)
    if (dest / "lpoi_tiny.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        _BUILDERS[family](tmp, seed)
        (tmp / "lpoi_tiny.json").write_text(json.dumps({"family": family, "seed": seed, "version": TINY_VERSION}))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def tiny_dest(family: str, seed: int = 0) -> Path:
    """The cache folder of ``tiny/<family>``: keyed by the builder's code and the CPU numerics."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model 'tiny/{family}'; known: {', '.join('tiny/' + f for f in TINY_FAMILIES)}")
    from lpoi.numerics import signature

    # random init runs ATen's vectorised kernels: weights built under other CPU numerics are other weights
    key = hashlib.sha256(f"{family}-{seed}-{TINY_VERSION}-{_source_digest()}-{signature()}".encode()).hexdigest()[:12]
    return cache_root() / f"{family}-s{seed}-{key}"


def _source_digest() -> str:
    # The cache key follows this file, so editing a builder can never serve stale weights.
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8] + card_source_digest()


# ---------------------------------------------------------------------------------------------- tokenizers


def _bpe_tokenizer(special: list[str], vocab_size: int = 1024, add_bos: bool = False, **named):
    """Byte-level BPE trained on the built-in corpus; ``named`` maps bos/eos/unk/pad to special tokens.
    ``add_bos``: the tokenizer prepends its BOS to every text, as Gemma's and Llama's do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    if add_bos:
        bos = named["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _bert_wordpiece(words: list[str]):
    """A BERT-uncased-shaped WordPiece vocab: Grounding DINO hard-codes the ids of [CLS]=101, [SEP]=102,
    '.'=1012 and '?'=1029 (``SPECIAL_TOKENS`` in modeling_grounding_dino), so they sit at those ids."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(1100)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    vocab[1012], vocab[1029] = ".", "?"
    fill = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789,!'\"-:;()"]
    fill += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    fill += sorted(set(words))
    slots = [i for i in range(104, 1100) if vocab[i].startswith("[unused")]
    for i, tok in zip(slots, dict.fromkeys(t for t in fill if t not in vocab)):
        vocab[i] = tok
    t = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    return t


def _corpus_words() -> list[str]:
    import re

    return [w.lower() for w in re.findall(r"[A-Za-z]+", _CORPUS)]


# ---------------------------------------------------------------------------------------------- builders


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _build_idefics2(dest: Path, seed: int) -> None:
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessor,
        Idefics2Processor,
    )

    tok = _bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]})
    n_latents = 4  # image tokens per image after the perceiver resampler
    image_proc = Idefics2ImageProcessor(
        do_image_splitting=False, size={"longest_edge": 32, "shortest_edge": 16}, do_pad=True
    )
    proc = Idefics2Processor(image_processor=image_proc, tokenizer=tok, image_seq_len=n_latents, chat_template=_IDEFICS2_TEMPLATE)
    text = dict(
        model_type="mistral", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, sliding_window=None,
    )
    cfg = Idefics2Config(
        text_config=text,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        perceiver_config=dict(hidden_size=32, resampler_n_latents=n_latents, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=8, num_key_value_heads=1),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    _save_vlm(dest, seed, Idefics2ForConditionalGeneration, cfg, tok, proc, eos_extra=["<end_of_utterance>"],
              widen=lambda m: m.model.connector)


def _widen_connector(connector, gain: float = 4.0) -> None:
    """At the default init (std 0.02) the tiny Idefics2 connector passes almost nothing of the image through
    (the original and a black image change the next-token log-probs by ~3e-5), so the listwise loss could not
    learn anything on the embedded default. A fan-in-scaled init restores an image signal (~0.07).

    Measured the same way on every tiny VLM (max |change| of the next-token log-probs, noise image vs black,
    default init): LLaVA 0.27, Qwen2.5-VL 0.07, Qwen3-VL 0.12, SmolVLM 0.14 -- the image reaches the text, so
    they keep their default init; Idefics2 8e-5 and Gemma 3 exactly 0 (zero-initialised projection) get this
    (0.05 and 0.35 after). ``tests/families`` checks every family stays above 1e-2."""
    import math

    import torch

    with torch.no_grad():
        for mod in connector.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0.0, gain / math.sqrt(mod.in_features))
        # Gemma 3 projects with a bare (vision, text) matrix (``x @ W``, fan-in = rows), initialised to zeros:
        # at init its image tokens are all zero and the image cannot reach the text at all.
        w = getattr(connector, "mm_input_projection_weight", None)
        if w is not None:
            w.normal_(0.0, gain / math.sqrt(w.shape[0]))


def _build_llava(dest: Path, seed: int) -> None:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _bpe_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"],
                         unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_size, patch = 32, 8
    image_proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=_LLAVA_TEMPLATE)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(image_size // patch) ** 2,
    )
    _save_vlm(dest, seed, LlavaForConditionalGeneration, cfg, tok, proc)


_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def _qwen_parts(patch: int):
    """Tokenizer and image/video processors shared by the tiny Qwen2.5-VL and Qwen3-VL (the hub models
    share the Qwen2 tokenizer's special tokens: EOS ``<|im_end|>``, pad ``<|endoftext|>``, no BOS)."""
    from transformers import Qwen2VLImageProcessor

    tok = _bpe_tokenizer(_QWEN_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _QWEN_SPECIAL[1:]})
    # Dynamic resolution: images are resized to multiples of patch * merge (16 px here) with at most 64 x 64 px
    # (16 image tokens), the tiny counterpart of the hub's min/max_pixels.
    image_proc = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                       min_pixels=(2 * patch) ** 2, max_pixels=64 * 64)
    return tok, image_proc


def _qwen_ids(tok) -> dict:
    return {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}


def _qwen_text(tok, **extra) -> dict:
    # head_dim 8: the multimodal RoPE sections (temporal, height, width) must sum to head_dim / 2.
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, **extra)


def _build_qwen_vl(dest: Path, seed: int, *, v3: bool) -> None:
    """Qwen2.5-VL (``v3=False``) or Qwen3-VL: same tokenizer and image processor, their own classes."""
    import transformers

    names = ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen3VLVideoProcessor") if v3 \
        else ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor")
    config_cls, model_cls, processor_cls, video_cls = (getattr(transformers, n) for n in names)
    patch = 8
    tok, image_proc = _qwen_parts(patch)
    proc = processor_cls(image_processor=image_proc, tokenizer=tok,
                         video_processor=video_cls(patch_size=patch, merge_size=2, temporal_patch_size=2),
                         chat_template=_QWEN3_VL_TEMPLATE if v3 else _QWEN25_VL_TEMPLATE)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=patch, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32)
    if v3:  # interleaved M-RoPE; a ViT with learned position embeddings and DeepStack feature taps
        rope["mrope_interleaved"] = True
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0])
        text = _qwen_text(tok, head_dim=8, rope_parameters=rope)
    else:  # a window-attention ViT with one full-attention block
        vision.update(window_size=32, fullatt_block_indexes=[1])
        text = _qwen_text(tok, rope_parameters=rope)
    cfg = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen_ids(tok))
    _save_vlm(dest, seed, model_cls, cfg, tok, proc, eos_extra=["<|endoftext|>"])


def _build_gemma3(dest: Path, seed: int) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"]
    # Like the hub tokenizer: it prepends <bos> to every text while the chat template renders <bos> too --
    # the encoding helpers (lpoi.models.chat) must not double it.
    tok = _bpe_tokenizer(special, add_bos=True, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                         unk_token="<unk>", extra_special_tokens={"boi_token": "<start_of_image>",
                                                                  "eoi_token": "<end_of_image>",
                                                                  "image_token": "<image_soft_token>"})
    tok.add_special_tokens({"additional_special_tokens": special[4:]})
    n_tokens, image_size = 4, 32  # fixed-size input (the hub's is 896 px -> 256 tokens)
    image_proc = Gemma3ImageProcessor(size={"height": image_size, "width": image_size})
    proc = Gemma3Processor(image_processor=image_proc, tokenizer=tok, image_seq_length=n_tokens,
                           chat_template=_GEMMA3_TEMPLATE)
    cfg = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                         sliding_window=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=8),
        mm_tokens_per_image=n_tokens,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    _save_vlm(dest, seed, Gemma3ForConditionalGeneration, cfg, tok, proc, eos_extra=["<end_of_turn>"],
              widen=lambda m: m.model.multi_modal_projector)


def _build_smolvlm(dest: Path, seed: int) -> None:
    """SmolVLM-Instruct is the Idefics3 architecture (``Idefics3ForConditionalGeneration``); SmolVLM2's own
    classes need the ``num2words`` package for their processor, and the model is the same design."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
               "<end_of_utterance>", "<global-img>", *grid]
    tok = _bpe_tokenizer(special, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
                         unk_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": special[3:]})
    crop, patch, scale = 32, 8, 2
    # Image splitting on (SmolVLM's default): the longest edge is resized to 64 px and cut into up to 2 x 2
    # crops of 32 px plus a global view, so sequences carry different numbers of crops.
    image_proc = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * crop},
                                        max_image_size={"longest_edge": crop})
    n_tokens = (crop // patch) ** 2 // scale**2
    proc = Idefics3Processor(image_processor=image_proc, tokenizer=tok, image_seq_len=n_tokens,
                             chat_template=_SMOLVLM_TEMPLATE)
    cfg = Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=crop, patch_size=patch),
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    _save_vlm(dest, seed, Idefics3ForConditionalGeneration, cfg, tok, proc)


def _build_llama(dest: Path, seed: int) -> None:
    """A tiny causal LM: the offline judge of the embedded default."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _bpe_tokenizer(["<unk>", "<s>", "</s>", "<pad>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                         pad_token="<pad>")
    tok.chat_template = _LLAMA_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    _seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    _set_generation_defaults(model, tok)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def _build_grounding_dino(dest: Path, seed: int) -> None:
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tok = _bert_wordpiece(_corpus_words())
    image_proc = GroundingDinoImageProcessor(size={"shortest_edge": 80, "longest_edge": 120})  # >= 80: a 1x1 last level breaks GroupNorm
    proc = GroundingDinoProcessor(image_processor=image_proc, tokenizer=tok)
    cfg = GroundingDinoConfig(
        backbone_config=dict(model_type="swin", image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                             num_heads=[1, 1, 2, 2], window_size=4, out_features=["stage2", "stage3", "stage4"]),
        text_config=dict(model_type="bert", vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
        num_queries=16, max_text_len=64, num_feature_levels=4,
    )
    _seed(seed)
    model = GroundingDinoForObjectDetection(cfg).eval()
    model.save_pretrained(dest)
    proc.save_pretrained(dest)


def _build_sam(dest: Path, seed: int) -> None:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    size, patch = 64, 8
    image_proc = SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                   mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4})
    proc = SamProcessor(image_processor=image_proc)
    cfg = SamConfig(
        vision_config=dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=size, patch_size=patch, window_size=4, global_attn_indexes=[1],
                           num_pos_feats=8, mlp_dim=32),
        prompt_encoder_config=dict(hidden_size=16, image_size=size, patch_size=patch, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=16),
    )
    _seed(seed)
    model = SamModel(cfg).eval()
    model.save_pretrained(dest)
    proc.save_pretrained(dest)


def _save_vlm(dest: Path, seed: int, model_cls, cfg, tok, proc, eos_extra: list[str] = (), widen=None) -> None:
    """Build ``model_cls(cfg)`` seeded, widen its connector (``widen(model)``, see :func:`_widen_connector`),
    set greedy generation defaults with the family's end-of-turn tokens, save model and processor."""
    _seed(seed)
    model = model_cls(cfg).eval()
    if widen is not None:
        _widen_connector(widen(model))
    _set_generation_defaults(model, tok, eos_extra=eos_extra)
    model.save_pretrained(dest)
    proc.save_pretrained(dest)


def _set_generation_defaults(model, tok, eos_extra: list[str] = ()) -> None:
    eos = [tok.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in eos_extra]
    gc = model.generation_config
    gc.eos_token_id = eos if len(eos) > 1 else eos[0]
    gc.pad_token_id = tok.pad_token_id
    gc.bos_token_id = tok.bos_token_id
    gc.do_sample = False


_BUILDERS = {
    "idefics2": _build_idefics2,
    "llava": _build_llava,
    "qwen2.5-vl": lambda dest, seed: _build_qwen_vl(dest, seed, v3=False),
    "qwen3-vl": lambda dest, seed: _build_qwen_vl(dest, seed, v3=True),
    "gemma3": _build_gemma3,
    "smolvlm": _build_smolvlm,
    "llama": _build_llama,
    "grounding-dino": _build_grounding_dino,
    "sam": _build_sam,
    **CARD_BUILDERS,  # tiny/groundingdino-py, tiny/segment-anything: the original packages (tiny_card.py)
}
