"""Tiny models: real transformers classes, built offline, deterministic, loadable like hub checkpoints."""

import hashlib

import pytest
import torch
from PIL import Image

from lpoi.models import ModelNotFound, load_detector, load_segmenter, load_vlm, resolve
from lpoi.models.chat import encode_prompts, prompt_text, yes_no_token_ids
from lpoi.models.tiny import tiny_path


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_weights_different_seed_different(tmp_path, monkeypatch):
    monkeypatch.setenv("LPOI_CACHE", str(tmp_path / "a"))
    a = tiny_path("llava", seed=0)
    monkeypatch.setenv("LPOI_CACHE", str(tmp_path / "b"))
    b = tiny_path("llava", seed=0)
    c = tiny_path("llava", seed=1)
    assert a != b  # separate caches, built twice
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


@pytest.mark.parametrize("name,cls", [("tiny/idefics2", "Idefics2ForConditionalGeneration"),
                                      ("tiny/llava", "LlavaForConditionalGeneration"),
                                      ("tiny/qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration"),
                                      ("tiny/qwen3-vl", "Qwen3VLForConditionalGeneration"),
                                      ("tiny/gemma3", "Gemma3ForConditionalGeneration"),
                                      ("tiny/smolvlm", "Idefics3ForConditionalGeneration")])
def test_vlm_forward_and_generate(name, cls):
    model, proc = load_vlm(name)
    assert type(model).__name__ == cls
    img = Image.new("RGB", (40, 30), (10, 200, 30))
    prompt = prompt_text(proc, "Describe this image.")
    assert "Describe this image." in prompt
    batch = encode_prompts(proc, [prompt, prompt + " x"], [img, img])
    assert batch["input_ids"][0, 0] == proc.tokenizer.pad_token_id  # left padded
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()
    yes, no = yes_no_token_ids(proc)
    assert yes != no and proc.tokenizer.decode([yes]).strip() == "Yes"
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]


def test_detector_and_segmenter_shapes():
    img = Image.new("RGB", (80, 60), (200, 30, 30))
    det, dproc = load_detector("tiny/grounding-dino")
    assert type(det).__name__ == "GroundingDinoForObjectDetection"
    # Grounding DINO hard-codes BERT's ids for [CLS], [SEP] and '.'; the tiny vocab keeps them
    ids = dproc.tokenizer("red car .").input_ids
    assert ids[0] == 101 and ids[-1] == 102 and 1012 in ids
    seg, sproc = load_segmenter("tiny/sam")
    inputs = sproc(images=img, input_boxes=[[[10, 10, 50, 40]]], return_tensors="pt")
    with torch.no_grad():
        out = seg(**inputs, multimask_output=True)
    assert out.iou_scores.shape == (1, 1, 3)


def test_unknown_names_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="unknown tiny model"):
        resolve("tiny/nope")
    import huggingface_hub.constants as hub_constants

    # the hub reads HF_HUB_OFFLINE at import time, so set both (no network is tried either way)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE"):
        load_vlm("nobody-has/this-model-xyz")
