"""Every supported VLM family, one tiny real model each, through every piece the stages use.

Per family (Idefics2, LLaVA-1.5, Qwen2.5-VL, Qwen3-VL, Gemma 3, SmolVLM): the packed per-sequence batch
equals the processor's own batch call; the fast log-prob path is taken and equals the full forward's
logits; greedy batched generation equals batch-1 generation and the naive single-prompt ``generate``;
Yes/No scoring uses the tokens the model emits after its own answer prefix and equals the naive
next-token log-probs; the image reaches the text; precomputed and online reference give the same
losses for all three methods. The log-prob equalities (batched/padded/chunked == naive) are in
``tests/train/test_logprobs.py``, over the same families.
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lpoi.eval.generate import generate_answers
from lpoi.listgen.verify import verify_scores
from lpoi.models import load_processor, load_vlm
from lpoi.models.chat import encode_batch, prompt_text, response_format, tokenizer_of, yes_no_token_ids
from lpoi.models.tiny import VLM_FAMILIES
from lpoi.train.collate import encode_sequences
from lpoi.train.data import write_synthetic_lists
from lpoi.models.logits import FAST_PATH_CLASSES, kept_logits
from lpoi.train.logprobs import sequence_logps
from lpoi.train.reference import run_reference
from trainkw import MAX_LENGTH
from trainkw import run_train as train

FAMILIES = [f"tiny/{f}" for f in VLM_FAMILIES]
# Processor call options of a naive single-sequence encoding (hand-written, as in test_logprobs).
NAIVE_KW = {"tiny/idefics2": {"do_image_splitting": False}, "tiny/gemma3": {"add_special_tokens": False}}
# The first answer token as the model emits it, hand-read from each template: after "Assistant:" /
# "ASSISTANT:" the answer starts with a space; after Qwen's and Gemma's "...assistant\n"/"model\n" it doesn't.
YES_SPELLING = {"tiny/idefics2": " Yes", "tiny/llava": " Yes", "tiny/smolvlm": " Yes",
                "tiny/qwen2.5-vl": "Yes", "tiny/qwen3-vl": "Yes", "tiny/gemma3": "Yes"}
QUESTIONS = ["Describe this image.", "Is there a dog sitting on the grass near a bench in this image?",
             "What color?", "How many objects are there in the picture on the left of the table?"]
SIZES = [(40, 50), (128, 96), (60, 20), (24, 36)]  # different sizes: different patch / crop counts


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = load_vlm(request.param)
    return request.param, model, processor


def _images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _naive_encode(name, processor, text, image):
    return processor(text=[text], images=[[image]], return_tensors="pt", **NAIVE_KW.get(name, {}))


# ---------------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_batch_equals_the_processors_own_batch(vlm, side):
    """One processor call per sequence, packed, gives exactly the tensors of one batched processor call."""
    name, _, processor = vlm
    texts = [prompt_text(processor, q) for q in QUESTIONS]
    images = _images()
    got = encode_batch(processor, texts, images, padding_side=side)
    tok = tokenizer_of(processor)
    old, tok.padding_side = tok.padding_side, side
    try:
        want = processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True,
                         **NAIVE_KW.get(name, {}))
    finally:
        tok.padding_side = old
    want = {k: v for k, v in want.items() if isinstance(v, torch.Tensor)}
    assert got.inputs.keys() == want.keys()
    for k in want:
        assert got.inputs[k].shape == want[k].shape, k
        assert torch.equal(got.inputs[k], want[k]), k
    # every offset slice is exactly that sequence's own single-sequence encoding
    for i, (text, image) in enumerate(zip(texts, images)):
        alone = _naive_encode(name, processor, text, image)
        if tok.bos_token_id is not None:  # Gemma 3: the template's <bos>, not a second one from the tokenizer
            assert int((got.inputs["input_ids"][i] == tok.bos_token_id).sum()) <= 1
        for k, v in alone.items():
            if not isinstance(v, torch.Tensor) or v.shape == alone["input_ids"].shape:
                continue
            a, b = got.offsets[k][i], got.offsets[k][i + 1]
            part = got.inputs[k][a:b].clone()
            region = tuple(slice(0, s) for s in v.shape)
            assert torch.equal(part[region], v), k  # its own tensor ...
            part[region] = 0
            assert not part.any(), k  # ... and zero padding around it


def test_micro_batches_split_every_family_per_sequence(vlm):
    """Any subset of rows, in any order, equals the encoding of just those rows."""
    _, _, processor = vlm
    answers = ["A red car.", "No", "It is blue and small.", "Two."]
    batch = encode_sequences(processor, questions=QUESTIONS, answers=answers, images=_images(),
                             sample_ids=["a", "b", "c", "d"])
    picked = batch.select([3, 1])
    alone = encode_sequences(processor, questions=[QUESTIONS[3], QUESTIONS[1]], answers=[answers[3], answers[1]],
                             images=[_images()[3], _images()[1]], sample_ids=["d", "b"])
    assert picked.sample_ids == ["d", "b"]
    for k, v in alone.inputs.items():
        p = picked.inputs[k]
        assert torch.equal(p[tuple(slice(0, s) for s in v.shape)], v), k
    assert torch.equal(picked.response_mask[:, : alone.response_mask.shape[1]], alone.response_mask)


# ---------------------------------------------------------------------------------------------- fast path


@pytest.mark.parametrize("peft", [False, True])
def test_fast_log_prob_path_is_taken_and_equals_full_logits(vlm, peft):
    name, model, processor = vlm
    assert type(model).__name__ in FAST_PATH_CLASSES
    batch = encode_sequences(processor, questions=QUESTIONS, answers=["A red car.", "No", "Blue.", "Two."],
                             images=_images(), sample_ids=list("abcd"))
    if peft:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    keep = torch.zeros_like(batch.response_mask)
    keep[:, :-1] = batch.response_mask[:, 1:]
    head = (model.get_base_model() if peft else model).get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            fast = kept_logits(model, batch.inputs, keep)
            full = model(**batch.inputs, use_cache=False).logits[keep]
    finally:
        hook.remove()
        if peft:
            model.unload()
    n_kept = int(keep.sum())
    assert seen[0] == (n_kept, head.in_features)  # the head saw only the kept positions
    assert seen[1][:2] == tuple(keep.shape)  # ... and the full forward all of them (the comparison is real)
    assert fast.shape == (n_kept, head.out_features)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)


def test_lora_can_leave_the_image_side_frozen(vlm):
    """``train.lora.exclude_vision_tower``: every family's vision encoder and projector match VISION_MODULES."""
    from peft import get_peft_model

    from lpoi.config import LoraParams
    from lpoi.train.lora import VISION_MODULES, lora_config

    name, model, _ = vlm
    peft_model = get_peft_model(model, lora_config(LoraParams(exclude_vision_tower=True)))
    try:
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
        vision = [n for n, _ in model.named_modules() if any(f".{m}." in f".{n}." for m in VISION_MODULES)]
        assert adapted and vision  # the language model is adapted, and the image side exists ...
        assert not [n for n in adapted if any(f".{m}." in n for m in VISION_MODULES)]  # ... and is left alone
    finally:
        peft_model.unload()


def test_image_reaches_the_text(vlm):
    """Noise image vs black image: the next-token log-probs move (see ``lpoi.models.tiny._widen_connector``)."""
    name, model, processor = vlm
    text = prompt_text(processor, "What is in the picture?")
    out = []
    for im in (_images([(128, 96)])[0], Image.new("RGB", (128, 96))):
        with torch.no_grad():
            out.append(torch.log_softmax(model(**_naive_encode(name, processor, text, im)).logits[0, -1].double(), -1))
    assert float((out[0] - out[1]).abs().max()) > 1e-2


# ---------------------------------------------------------------------------------------------- generation


def test_greedy_batched_generation_equals_batch_of_one(vlm, tmp_path):
    name, model, processor = vlm
    items = [{"id": i, "image": im, "question": q} for i, (q, im) in enumerate(zip(QUESTIONS, _images()))]
    kw = dict(max_new_tokens=8, progress=False)
    generate_answers(model, processor, items, tmp_path / "b4.jsonl", batch_size=4, **kw)
    generate_answers(model, processor, items, tmp_path / "b1.jsonl", batch_size=1, **kw)
    b4 = [json.loads(x) for x in (tmp_path / "b4.jsonl").read_text().splitlines()]
    b1 = [json.loads(x) for x in (tmp_path / "b1.jsonl").read_text().splitlines()]
    assert b4 == b1 and any(r["response"] for r in b4)
    tok = tokenizer_of(processor)
    for it, row in zip(items, b1):  # the naive single-prompt generate, straight through the processor
        enc = _naive_encode(name, processor, prompt_text(processor, it["question"]), it["image"])
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)[0]
        assert row["response"] == tok.decode(out[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_yes_no_tokens_are_the_ones_the_model_emits(vlm):
    name, _, processor = vlm
    tok = tokenizer_of(processor)
    yes, no = yes_no_token_ids(processor)
    assert tok.decode([yes]) == YES_SPELLING[name] and tok.decode([no]) == YES_SPELLING[name].replace("Yes", "No")
    # independently: the first token of an assistant turn "Yes" rendered by the chat template itself
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}]
    turn = user + [{"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}]
    p_ids = tok(processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False))["input_ids"]
    f_ids = tok(processor.apply_chat_template(turn, tokenize=False))["input_ids"]
    if name != "tiny/llava":  # LLaVA-1.5's template renders no assistant header after an answer
        assert f_ids[: len(p_ids)] == p_ids and f_ids[len(p_ids)] == yes


def test_yes_no_scoring_equals_naive_next_token_log_probs(vlm, tmp_path):
    name, model, processor = vlm
    yes, no = yes_no_token_ids(processor)
    images = _images()
    items = [{"id": i, "image": im, "question": q, "yes_no": True} for i, (q, im) in enumerate(zip(QUESTIONS, images))]
    generate_answers(model, processor, items, tmp_path / "yn.jsonl", batch_size=4, yes_no="logits", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "yn.jsonl").read_text().splitlines()]
    verify = verify_scores(model, processor, images, QUESTIONS, ["Yes."] * 4, batch_size=4)
    verify_1 = verify_scores(model, processor, images, QUESTIONS, ["Yes."] * 4, batch_size=1)
    np.testing.assert_allclose(verify, verify_1, atol=1e-5, rtol=0)
    for it, row in zip(items, rows):
        enc = _naive_encode(name, processor, prompt_text(processor, it["question"]), it["image"])
        with torch.no_grad():
            lp = torch.log_softmax(model(**enc).logits[0, -1].float(), -1)
        assert row["logprob_yes"] == pytest.approx(float(lp[yes]), abs=1e-5)
        assert row["logprob_no"] == pytest.approx(float(lp[no]), abs=1e-5)
        assert row["response"] == ("Yes" if lp[yes] > lp[no] else "No")


# ---------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_synthetic_lists(tmp_path_factory.mktemp("lists"), n_samples=4, k=3)


def _train(lists, out, name, **kw):
    args = dict(lists_path=lists, out_dir=out, model_name=name, beta=1.0, lr=3e-3, batch_size=2, max_steps=2,
                scheduler="constant", save_steps=0, progress=False, seed=0, micro_batch_sequences=3,
                lora={"r": 4, "alpha": 8, "dropout": 0.0})
    args.update(kw)
    return [h["loss"] for h in train(**args)["history"]]


def test_precomputed_and_online_reference_give_the_same_losses(vlm, lists, tmp_path):
    """All three methods; micro-batches of 3 sequences cut each family's batch mid-sample. Step 1 (B = 0,
    policy = reference): lpoi K=3 = 2 log 2 + log 3!, mdpo 3 log 2, dpo log 2 (see tests/train/test_trainer)."""
    name = vlm[0]
    ref = tmp_path / "ref.jsonl"
    run_reference(lists, ref, model_name=name, batch_size=2, micro_batch_sequences=3, max_length=MAX_LENGTH,
                  progress=False)
    pre = _train(lists, tmp_path / "pre", name, reference_path=ref)
    online = _train(lists, tmp_path / "on", name, reference_path=None, reference="online")
    assert pre[0] == pytest.approx(2 * math.log(2) + math.log(6), abs=1e-6)
    assert abs(pre[1] - pre[0]) > 1e-3  # the second step scores a changed policy
    np.testing.assert_allclose(pre, online, atol=1e-5, rtol=0)
    crop = _train(lists, tmp_path / "crop", name, reference_path=ref, method="mdpo", mdpo_corruption="crop")
    dpo = _train(lists, tmp_path / "dpo", name, reference_path=ref, method="dpo")
    assert crop[0] == pytest.approx(3 * math.log(2), abs=1e-6)  # its crop rows are scored online
    assert dpo[0] == pytest.approx(math.log(2), abs=1e-6)


def test_learning_signal_on_qwen2_5_vl(tmp_path):
    """30 steps at a high lr on tiny Qwen2.5-VL: the list loss falls and the list ranking becomes right."""
    from lpoi.train.collate import collate_samples
    from lpoi.train.data import load_lists
    from lpoi.train.losses import preference_loss
    from lpoi.train.reference import load_reference

    name = "tiny/qwen2.5-vl"
    lists = write_synthetic_lists(tmp_path / "data", n_samples=8, k=5)
    ref = tmp_path / "ref.jsonl"
    run_reference(lists, ref, model_name=name, batch_size=4, max_length=MAX_LENGTH, progress=False)
    summary = train(lists_path=lists, reference_path=ref, out_dir=tmp_path / "run", model_name=name, beta=1.0,
                    lr=3e-3, batch_size=2, max_steps=30, scheduler="constant", save_steps=0, progress=False, seed=0,
                    lora={"r": 8, "alpha": 16, "dropout": 0.0})
    first = summary["history"][0]  # before the first update every reward is 0 (up to float32 rounding
    # of the same sums in other batch compositions, ~2e-7 here), so the ranking is not yet right
    assert max(abs(first[f"reward_{k}"]) for k in range(5)) < 1e-5
    assert first["loss"] == pytest.approx(2 * math.log(2) + math.log(120), abs=1e-5)

    from peft import PeftModel

    model, processor = load_vlm(name)
    model = PeftModel.from_pretrained(model, str(tmp_path / "run" / "adapter")).eval()
    samples = load_lists(lists)
    ref_list, ref_rej, _ = load_reference(ref, samples, model_name=name, max_length=MAX_LENGTH)
    with torch.no_grad():
        logps = sequence_logps(model, collate_samples(processor, samples, columns=range(5))).view(len(samples), 6)
    after = preference_loss("lpoi", policy_list_logps=logps[:, :5], policy_rejected_logps=logps[:, 5],
                            reference_list_logps=ref_list, reference_rejected_logps=ref_rej, beta=1.0)
    start = 2 * math.log(2) + math.log(120)
    assert float(after["loss"]) < 0.5 * start
    assert float(after["list"]) < math.log(120) - 1.0
    assert float(after["ranking_accuracy"]) >= 0.85


# ---------------------------------------------------------------------------------------------- config


def test_response_format_cache_follows_the_template_not_the_object():
    processor = load_processor("tiny/qwen2.5-vl")
    assert response_format(processor) == ("", "<|im_end|>")
    template = processor.chat_template
    processor.chat_template = template.replace("<|im_end|>", "<|endoftext|>")
    try:  # same object (same id), other template: the cached answer must not be reused
        assert response_format(processor) == ("", "<|endoftext|>")
    finally:
        processor.chat_template = template
    assert response_format(processor) == ("", "<|im_end|>")


@pytest.mark.parametrize("name,budget", [("tiny/qwen2.5-vl", 32 * 32), ("tiny/qwen3-vl", 32 * 32),
                                         ("tiny/smolvlm", 32 * 32), ("tiny/idefics2", 20 * 20)])
def test_max_pixels_bounds_dynamic_resolution(name, budget):
    image = _images([(128, 96)])[0]
    enc = {}
    for b in (None, budget):
        processor = load_processor(name, max_pixels=b)
        enc[b] = encode_batch(processor, [prompt_text(processor, "Q")], [image]).inputs
    if name != "tiny/idefics2":  # its perceiver gives a fixed number of image tokens
        assert enc[budget]["input_ids"].shape[1] < enc[None]["input_ids"].shape[1]  # fewer image tokens
    pv = enc[budget]["pixel_values"]
    if "image_grid_thw" in enc[budget]:  # Qwen: patches of patch x patch px, 2 frames each
        patch = load_processor(name).image_processor.patch_size
        assert int(enc[budget]["image_grid_thw"][0, 1:].prod()) * patch * patch <= budget
    else:
        mask = enc[budget]["pixel_attention_mask"]
        assert int(mask.flatten(2).sum(-1).max()) <= budget and pv.shape[-1] * pv.shape[-2] <= budget


@pytest.mark.parametrize("name", ["tiny/llava", "tiny/gemma3"])
def test_max_pixels_below_a_fixed_input_size_is_an_error(name):
    assert load_processor(name, max_pixels=32 * 32) is not None  # fits the fixed 32 x 32 input
    with pytest.raises(ValueError, match="fixed input size"):
        load_processor(name, max_pixels=32 * 32 - 1)


def test_reference_of_another_resolution_budget_is_refused(lists, tmp_path):
    from lpoi.train.data import load_lists
    from lpoi.train.reference import ReferenceError, load_reference

    ref = tmp_path / "ref.jsonl"
    stats = run_reference(lists, ref, model_name="tiny/qwen2.5-vl", batch_size=4, max_pixels=32 * 32, progress=False)
    samples = load_lists(lists)
    load_reference(ref, samples, model_name="tiny/qwen2.5-vl", max_length=None, max_pixels=32 * 32)
    with pytest.raises(ReferenceError, match="max_pixels=1024"):
        load_reference(ref, samples, model_name="tiny/qwen2.5-vl", max_length=None, max_pixels=None)
    again = run_reference(lists, ref, model_name="tiny/qwen2.5-vl", batch_size=4, progress=False)  # budget changed
    assert stats["n_computed"] == again["n_computed"] == len(samples) and again["n_resumed"] == 0
