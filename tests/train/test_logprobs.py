"""Sequence log-probs on the tiny model of every supported family: batched, padded, chunked == naive.

The naive reference here shares no code with ``lpoi.train.logprobs``/``collate``/``lpoi.models.chat``:
it runs the processor on the prompt alone and on prompt + answer (one sequence, no padding, call options
from the hand table below), checks the prompt's ids are a prefix, runs the model's full forward on the
full sequence, and sums ``log_softmax`` (float64) of each answer token at the position before it.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from lpoi.models import load_vlm
from lpoi.models.chat import prompt_text, response_format, tokenizer_of
from lpoi.models.tiny import VLM_FAMILIES
from lpoi.train.collate import CROP, collate_samples, encode_sequences, method_columns
from lpoi.train.data import load_lists, mdpo_random_crop, random_crop_box, write_synthetic_lists
from lpoi.train.logprobs import sequence_logps

FAMILIES = [f"tiny/{f}" for f in VLM_FAMILIES]
# Hand-read from the templates in lpoi/models/tiny.py (copies of the hub templates): Idefics2 renders
# "Assistant: {answer}<end_of_utterance>\n"; LLaVA-1.5's ends the turn with a space, so EOS closes it;
# Qwen and Gemma 3 start the answer right after the newline of their assistant header.
EXPECTED_FORMAT = {
    "tiny/idefics2": (" ", "<end_of_utterance>"),
    "tiny/llava": (" ", "</s>"),
    "tiny/qwen2.5-vl": ("", "<|im_end|>"),
    "tiny/qwen3-vl": ("", "<|im_end|>"),
    "tiny/gemma3": ("", "<end_of_turn>"),
    "tiny/smolvlm": (" ", "<end_of_utterance>"),
}
# Processor call options of the naive encoding: Idefics2 as in the paper (no image splitting); Gemma 3's
# template renders <bos> itself, so its tokenizer must not add a second one.
NAIVE_KW = {"tiny/idefics2": {"do_image_splitting": False}, "tiny/gemma3": {"add_special_tokens": False}}


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = load_vlm(request.param)
    return request.param, model, processor


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


QUESTIONS = [
    "What is in the picture?",
    "Describe this image.",
    "Is there a dog?",
    "What color is the object?",
]
ANSWERS = [
    "A red car.",
    "The image shows a cat sleeping on a sofa near a table with a cup and a plate.",
    "No",
    "It is blue.",
]
SIZES = [(40, 50), (32, 32), (60, 20), (24, 36)]


def _naive(name, model, processor, question, answer, image, max_length=None):
    prefix, end = EXPECTED_FORMAT[name]
    pt = prompt_text(processor, question)
    kw = NAIVE_KW.get(name, {})
    e_prompt = processor(text=[pt], images=[[image]], return_tensors="pt", **kw)
    e_full = processor(text=[pt + prefix + answer + end], images=[[image]], return_tensors="pt", **kw)
    n_prompt = e_prompt["input_ids"].shape[1]
    ids = e_full["input_ids"][0]
    assert ids[:n_prompt].tolist() == e_prompt["input_ids"][0].tolist()
    if max_length is not None and ids.shape[0] > max_length:
        shape = e_full["input_ids"].shape  # cut every per-token tensor (Qwen's mm_token_type_ids, Gemma's ...)
        e_full = {k: (v[:, :max_length] if tuple(v.shape) == tuple(shape) else v) for k, v in e_full.items()}
        ids = ids[:max_length]
    with torch.no_grad():
        logp = torch.log_softmax(model(**e_full).logits[0].double(), -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, ids.shape[0])), ids.shape[0] - n_prompt


def test_response_format_and_exact_boundary(vlm):
    name, model, processor = vlm
    assert response_format(processor) == EXPECTED_FORMAT[name]
    end = EXPECTED_FORMAT[name][1]
    batch = encode_sequences(
        processor,
        questions=QUESTIONS,
        answers=ANSWERS,
        images=_images(SIZES),
        sample_ids=["a", "b", "c", "d"],
    )
    tok = tokenizer_of(processor)
    for i, (q, a, im) in enumerate(zip(QUESTIONS, ANSWERS, _images(SIZES))):
        _, n_resp = _naive(name, model, processor, q, a, im)
        mask = batch.response_mask[i]
        assert int(mask.sum()) == n_resp
        # the masked tokens decode to the answer and its end-of-turn token, nothing of the prompt
        assert tok.decode(batch.inputs["input_ids"][i][mask]).strip() == a + end
        # right padding: the response ends where the row's attention ends
        last = int(batch.inputs["attention_mask"][i].sum())
        assert bool(mask[last - 1]) and not bool(mask[last:].any())


@pytest.mark.parametrize("micro", [None, 1, 3])
def test_sequence_logps_equals_naive_unpadded(vlm, micro):
    name, model, processor = vlm
    images = _images(SIZES)
    batch = encode_sequences(
        processor, questions=QUESTIONS, answers=ANSWERS, images=images, sample_ids=["a", "b", "c", "d"]
    )
    assert len(set(batch.inputs["attention_mask"].sum(-1).tolist())) > 1  # mixed lengths: padding present
    with torch.no_grad():
        got = sequence_logps(model, batch, micro_batch_sequences=micro)
    want = [_naive(name, model, processor, q, a, im)[0] for q, a, im in zip(QUESTIONS, ANSWERS, images)]
    assert got.dtype == torch.float64 and got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


def test_truncation_cuts_the_response_only(vlm, recwarn):
    name, model, processor = vlm
    images = _images(SIZES[:2])
    full = encode_sequences(
        processor, questions=QUESTIONS[:2], answers=ANSWERS[:2], images=images, sample_ids=["a", "b"]
    )
    lengths = full.inputs["attention_mask"].sum(-1).tolist()
    prompt_len = [int(length - full.response_mask[i].sum()) for i, length in enumerate(lengths)]
    resp_len = [int(m.sum()) for m in full.response_mask]
    max_length = max(prompt_len) + 2  # both prompts fit; at least the longer answer is cut
    cut = encode_sequences(
        processor,
        questions=QUESTIONS[:2],
        answers=ANSWERS[:2],
        images=images,
        sample_ids=["a", "b"],
        max_length=max_length,
    )
    assert cut.n_truncated == sum(length > max_length for length in lengths) >= 1
    assert any("truncated" in str(w.message) for w in recwarn)
    for i in range(2):  # the prompt is intact; the response keeps what fits
        assert int(cut.response_mask[i].sum()) == min(resp_len[i], max_length - prompt_len[i])
    assert cut.inputs["input_ids"].shape[1] <= max_length
    with torch.no_grad():
        got = sequence_logps(model, cut)
    want = [
        _naive(name, model, processor, q, a, im, max_length=max_length)[0]
        for q, a, im in zip(QUESTIONS[:2], ANSWERS[:2], images)
    ]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"sample 'b'.*no room"):
        encode_sequences(
            processor,
            questions=QUESTIONS[1:2],
            answers=ANSWERS[1:2],
            images=images[1:],
            sample_ids=["b"],
            max_length=prompt_len[1],
        )


def test_collate_layout_shares_the_original_chosen_row(tmp_path, vlm):
    """Row b*(C+1)+j: chosen on column j, then rejected on the original; equal to separate encodings."""
    name, model, processor = vlm
    lists = load_lists(write_synthetic_lists(tmp_path, n_samples=2, k=3))
    batch = collate_samples(processor, lists, columns=(0, 1, 2))
    assert len(batch) == 2 * 4 and batch.sample_ids == ["s000"] * 4 + ["s001"] * 4
    with torch.no_grad():
        got = sequence_logps(model, batch).view(2, 4)
    for b, s in enumerate(lists):
        for j in range(3):
            want, _ = _naive(name, model, processor, s.prompt, s.chosen, Image.open(s.images[j]).convert("RGB"))
            assert abs(float(got[b, j]) - want) < 1e-5
        want, _ = _naive(name, model, processor, s.prompt, s.rejected, Image.open(s.images[0]).convert("RGB"))
        assert abs(float(got[b, 3]) - want) < 1e-5


def test_gradients_reach_every_row(vlm):
    _, model, processor = vlm
    batch = encode_sequences(
        processor,
        questions=QUESTIONS[:2],
        answers=ANSWERS[:2],
        images=_images(SIZES[:2]),
        sample_ids=["a", "b"],
    )
    head = model.get_output_embeddings().weight
    head.grad = None
    for row in range(2):
        model.zero_grad()
        sequence_logps(model, batch, micro_batch_sequences=1)[row].backward()
        assert head.grad is not None and float(head.grad.abs().sum()) > 0
    model.zero_grad()


def test_method_columns():
    assert method_columns("lpoi", 5) == (0, 1, 2, 3, 4)
    assert method_columns("mdpo", 5) == (0, 4)
    assert method_columns("mdpo", 5, "crop") == (0, CROP)
    assert method_columns("dpo", 5) == (0,)
    with pytest.raises(ValueError, match="mdpo_corruption"):
        method_columns("mdpo", 5, "blur")


def test_mdpo_crop_box_keeps_1_to_20_percent():
    fractions = []
    for i in range(300):
        x0, y0, x1, y1 = random_crop_box(200, 120, key=f"k{i}")
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 120
        frac = (x1 - x0) * (y1 - y0) / (200 * 120)
        assert 0.008 <= frac <= 0.21  # scale (0.01, 0.2), up to rounding of the sides
        assert 3 / 4 - 0.1 <= (x1 - x0) / (y1 - y0) <= 4 / 3 + 0.1
        fractions.append(frac)
    assert np.mean(fractions) == pytest.approx(0.105, abs=0.02)  # uniform on [0.01, 0.2]
    assert random_crop_box(200, 120, "same") == random_crop_box(200, 120, "same")
    img = _images([(64, 48)])[0]
    out = mdpo_random_crop(img, "x")
    assert out.size == img.size and np.asarray(out).tobytes() != np.asarray(img).tobytes()


def test_an_unknown_class_falls_back_to_full_logits_and_says_so():
    """A class outside FAST_PATH_CLASSES (here the text-only tiny Llama) may post-process its logits: its own
    full forward is used, sliced, with a warning -- never a guessed backbone + head."""
    from lpoi.models import load_causal_lm
    from lpoi.models import logits as logprobs

    model, tok = load_causal_lm("tiny/llama")
    assert type(model).__name__ not in logprobs.FAST_PATH_CLASSES
    inputs = dict(tok(["a red car", "two dogs on the grass"], return_tensors="pt", padding=True))
    keep = inputs["attention_mask"].bool()
    logprobs._WARNED.discard(type(model).__name__)
    with pytest.warns(UserWarning, match="no fast log-prob path"), torch.no_grad():
        got = logprobs.kept_logits(model, inputs, keep)
    with torch.no_grad():
        want = model(**inputs).logits[keep]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
