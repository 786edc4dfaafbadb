"""The world's base VLM: its tokenizer, its patch labels, and a pretraining run that saves a loadable model."""

import hashlib

import numpy as np
import pytest
import torch

from lpoi.config import PretrainParams, WorldModelParams
from lpoi.models.chat import prompt_text, yes_no_token_ids
from lpoi.world.model import build_processor, build_tokenizer, build_untrained
from lpoi.world.pretrain import patch_labels, pretrain_examples, run_pretrain
from lpoi.world.scenes import CLASSES, PALETTES, rle_encode

TINY = WorldModelParams(image_size=16, patch_size=8, vision_hidden=16, vision_layers=1, text_hidden=32,
                        text_layers=1, heads=2, vocab_size=400)


def test_tokenizer_words_are_single_tokens_and_yes_no_follow_a_space():
    tok = build_tokenizer(400)
    for w in [*CLASSES, *{c for p in PALETTES.values() for c in p}]:
        assert len(tok.tokenize(" " + w)) == 1, w
    yes, no = yes_no_token_ids(build_processor(tok, TINY))  # as the model emits them after the prompt
    assert tok.convert_ids_to_tokens([yes, no]) == ["ĠYes", "ĠNo"]
    assert tok("USER: x Yes")["input_ids"][-1] == yes  # the id an answer after the question uses


def test_prompt_ends_on_the_question_and_sequences_encode():
    from PIL import Image

    from lpoi.train.collate import encode_sequences

    _, proc = build_untrained(TINY, seed=0)
    assert prompt_text(proc, "Is there a circle") == "USER: <image>\nIs there a circle"
    img = Image.new("RGB", (64, 64), (200, 200, 200))
    batch = encode_sequences(proc, questions=["Is there a circle", "Describe this image."], answers=["Yes", "A red circle."],
                             images=[img, img], sample_ids=["a", "b"])
    tok = proc.tokenizer
    first = batch.inputs["input_ids"][0][batch.response_mask[0]].tolist()
    assert tok.convert_ids_to_tokens(first) == ["ĠYes", "</s>"]


def test_untrained_model_is_seeded():
    a, _ = build_untrained(TINY, seed=0)
    b, _ = build_untrained(TINY, seed=0)
    c, _ = build_untrained(TINY, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_patch_labels_by_hand():
    tok = {"circle": 11, "ring": 12}
    full = np.zeros((64, 64), bool)
    full[:32, :32] = True  # fills cell (0, 0)
    sliver = np.zeros((64, 64), bool)
    sliver[:32, 32:35] = True  # 3/32 = 9 % of cell (0, 1): below the 20 % share
    big = np.zeros((64, 64), bool)
    big[32:, 32:48] = True  # half of cell (1, 1)
    objs = [{"class": "circle", "mask": rle_encode(full)}, {"class": "ring", "mask": rle_encode(sliver)},
            {"class": "ring", "mask": rle_encode(big)}]
    assert patch_labels(objs, canvas=64, grid=2, class_ids=tok, background_id=0).tolist() == [11, 0, 0, 12]


def test_pretrain_examples_ask_present_and_absent_classes(small_world):
    from lpoi.io import read_jsonl

    _, out, _ = small_world
    rows = list(read_jsonl(out / "pretrain" / "scenes.jsonl"))
    ex = pretrain_examples(rows, [None] * len(rows), [None] * len(rows), seed=0)
    assert len(ex) == 3 * len(rows)
    yes = [e for e in ex if e.answer == "Yes"]
    no = [e for e in ex if e.answer == "No"]
    assert len(yes) == len(no) == len(rows)
    assert all(e.question.startswith("Is there a ") for e in yes + no)
    assert pretrain_examples(rows, [None] * len(rows), [None] * len(rows), seed=0) == ex


def _digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()


def test_pretrain_saves_a_loadable_deterministic_model(small_world, tmp_path):
    from lpoi.models import load_vlm

    world, out, _ = small_world
    w = world.model_copy(update={"model": TINY, "pretrain": PretrainParams(steps=4, batch_size=4, warmup_steps=1)})
    stats = run_pretrain(w, out, tmp_path / "a", progress=False)
    assert stats["steps"] == 4 and len(stats["history"]) == 4
    assert all(np.isfinite([h["answer_loss"] for h in stats["history"]]))
    run_pretrain(w, out, tmp_path / "b", progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # seeded: same data, same weights
    model, proc = load_vlm(str(tmp_path / "a"))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert proc.chat_template and yes_no_token_ids(proc)


def test_bad_model_sizes_are_refused():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        WorldModelParams(image_size=50, patch_size=8)
    with pytest.raises(ValueError, match="multiple of heads"):
        WorldModelParams(text_hidden=30, heads=4)
