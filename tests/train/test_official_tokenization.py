"""``reference.tokenization: official`` against an independent re-derivation of the official trainer.

The expected ids below are derived plainly from the official code (github fatemehpesaran310/lpoi @ 7008d7c),
without calling lpoi's tokenization:

* lpoi.py ~L80-98: ``prompt = processor.apply_chat_template([user turn], tokenize=False)`` (no generation
  prompt), ``chosen = processor.apply_chat_template([assistant turn], tokenize=False)``; the Idefics2 processor
  is built with ``do_image_splitting=False``;
* lpoi_dpo_trainer_5img.py ``_build_tokenized_answer``: ``full = processor(prompt + answer, images)``,
  ``prompt_ids = processor(prompt, images)``, ``answer_ids = full[len(prompt_ids):]``;
* ``_add_special_tokens`` (TRL 0.11 ``add_bos_token_if_needed``/``add_eos_token_if_needed``): BOS prepended to
  the prompt when its first id is not BOS; EOS appended to the answer when its last id is not EOS;
* ``_truncate_tokens`` (``truncation_mode="keep_end"``): ``longer`` = the longer of chosen/rejected answer; if
  prompt + longer > max_length, the prompt keeps its last max_prompt_length ids; if prompt + longer is still
  > max_length, each answer keeps its first max_length - max_prompt_length ids;
* ``_build_sequence_tokens``: ids = prompt + answer, labels = -100 over the prompt (the scored mask = answer).

LLaVA-1.5: the authors' pinned processor (llava-1.5-*-hf @ a272c74) left ``<image>`` as ONE token, so its
lengths are the tokenizer's on the text (the one ``<image>`` token); the ids the model reads today carry the
processor's expanded image tokens in its place.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lpoi.models import load_vlm
from lpoi.train.collate import Tokenization, collate_samples
from lpoi.train.data import ListSample

QUESTION = "What is the animal on the left doing in this picture?"
SHORT = "It sleeps."
LONG = "The animal on the left is a brown dog lying on a red blanket, and it seems to be sleeping quietly."


def _image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(24, 32, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module", params=["tiny/idefics2", "tiny/llava"])
def family(request):
    _, processor = load_vlm(request.param)
    return request.param, processor


def _official(name, processor, answer: str, partner: str, image, max_length: int, max_prompt_length: int):
    """(ids, scored mask) of one sequence, re-derived from the official code as the module docstring says."""
    tok = processor.tokenizer
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(user, tokenize=False)

    def turn(text):
        return processor.apply_chat_template([{"role": "assistant", "content": [{"type": "text", "text": text}]}],
                                             tokenize=False)

    if name == "tiny/idefics2":
        def tokenize(text):  # the processor expands the image (do_image_splitting=False, lpoi.py)
            return list(processor(text=[text], images=[[image]], do_image_splitting=False)["input_ids"][0])
    else:
        def tokenize(text):  # the pinned LLaVA processor: the tokenizer on the text, <image> one token
            return tok(text)["input_ids"]

    def build(text):  # _build_tokenized_answer, then add_eos_token_if_needed
        full, p = tokenize(prompt + turn(text)), tokenize(prompt)
        ids = full[len(p):]
        start = len(p)
        if p != full[:start]:  # "tokens can be merged": the boundary moves back one id
            start -= 1
        if not ids or ids[-1] != tok.eos_token_id:
            ids = ids + [tok.eos_token_id]
        return full[:start], ids

    p, ans = build(answer)
    if not p or p[0] != tok.bos_token_id:
        p = [tok.bos_token_id] + p
    other = build(partner)[1]
    longer = max(len(ans), len(other))
    if len(p) + longer > max_length:
        p = p[-max_prompt_length:]
    if len(p) + longer > max_length:
        ans = ans[: max_length - max_prompt_length]
    if name == "tiny/llava":  # what the model reads today: the one <image> expanded to the processor's count
        n = list(processor(text=[prompt], images=[[image]])["input_ids"][0]).count(processor.image_token_id)
        i = p.index(processor.image_token_id)
        p = p[:i] + [processor.image_token_id] * n + p[i + 1:]
    return p + ans, [False] * len(p) + [True] * len(ans)


def _ours(processor, sample, tokenization):
    batch = collate_samples(processor, [sample], columns=(0, 1), tokenization=tokenization)
    att = batch.inputs["attention_mask"].bool()
    return [(batch.inputs["input_ids"][i][att[i]].tolist(), batch.response_mask[i][att[i]].tolist())
            for i in range(len(batch))], batch


def _sample(tmp_path, chosen: str, rejected: str) -> ListSample:
    paths = []
    for k in range(2):
        path = tmp_path / f"img{k}.png"
        _image(k).save(path)
        paths.append(path)
    return ListSample("s0", QUESTION, chosen, rejected, tuple(paths), "d")


def _prompt_length(name, processor, tmp_path) -> int:
    """The prompt's length as the official trainer counted it (LLaVA: one id per image)."""
    ids, mask = _official(name, processor, SHORT, SHORT, _image(0), 10**6, 10**6 - 1)
    n = ids.count(processor.image_token_id) if name == "tiny/llava" else 1
    return len(ids) - sum(mask) - (n - 1)


def test_untruncated_sequences_equal_the_official_ones(family, tmp_path):
    """Chosen on both list images and rejected on the original: ids and scored mask equal, EOS scored."""
    name, processor = family
    tk = Tokenization("official", 512, 128)
    rows, batch = _ours(processor, _sample(tmp_path, SHORT, LONG), tk)
    images = [_image(0), _image(1), _image(0)]
    for (ids, mask), answer, partner, image in zip(rows, [SHORT, SHORT, LONG], [LONG, LONG, SHORT], images):
        assert (ids, mask) == _official(name, processor, answer, partner, image, 512, 128)
        assert ids[-1] == processor.tokenizer.eos_token_id and mask[-1]
    assert batch.n_truncated == 0


def test_scored_span_is_the_rendered_assistant_turn(family, tmp_path):
    """The scored ids decode to the assistant turn as the template renders it, plus EOS -- "Assistant: ...
    <end_of_utterance>\\n</s>" for Idefics2 -- unlike the answer mode. LLaVA-1.5's user turn ends with a space
    that merges into the assistant turn's first token, which the official split drops: the scored text starts
    inside "ASSISTANT" and the prompt ends before the space."""
    name, processor = family
    rows, _ = _ours(processor, _sample(tmp_path, SHORT, LONG), Tokenization("official", 512, 128))
    ids, mask = rows[0]
    text = processor.tokenizer.decode([t for t, m in zip(ids, mask) if m])
    if name == "tiny/idefics2":
        assert text == f"Assistant: {SHORT}<end_of_utterance>\n</s>", repr(text)
    else:
        assert text.endswith(f": {SHORT} </s>") and "ASSISTANT".endswith(text.split(":")[0].strip()), repr(text)
    answer_rows, _ = _ours(processor, _sample(tmp_path, SHORT, LONG), Tokenization("answer", 512))
    assert sum(answer_rows[0][1]) < sum(mask)


def test_keep_end_truncation_follows_the_pairs_longer_answer(family, tmp_path):
    """max_length chosen so that prompt + SHORT fits but prompt + LONG does not: the *chosen* rows lose their
    prompt's first id too (the pair's longer answer decides), and every answer is cut to
    max_length - max_prompt_length ids -- exactly as the official code does."""
    name, processor = family
    p = _prompt_length(name, processor, tmp_path)
    short = sum(_official(name, processor, SHORT, SHORT, _image(0), 10**6, 10**6 - 1)[1])
    max_prompt_length = p - 1  # drop the BOS only: the image tokens stay whole
    max_length = p + short + 2
    rows, batch = _ours(processor, _sample(tmp_path, SHORT, LONG), Tokenization("official", max_length,
                                                                                 max_prompt_length))
    images = [_image(0), _image(1), _image(0)]
    for (ids, mask), answer, partner, image in zip(rows, [SHORT, SHORT, LONG], [LONG, LONG, SHORT], images):
        want = _official(name, processor, answer, partner, image, max_length, max_prompt_length)
        assert (ids, mask) == want
        assert ids[0] != processor.tokenizer.bos_token_id  # the kept prompt lost its first id
    assert sum(rows[2][1]) == max_length - max_prompt_length  # LONG cut; SHORT already fits the limit
    assert sum(rows[0][1]) == short and batch.n_truncated == 1


def test_a_cut_into_the_image_is_one_line_naming_the_sample(family, tmp_path):
    name, processor = family
    p = _prompt_length(name, processor, tmp_path)
    with pytest.raises(ValueError, match=r"sample 's0': reference.tokenization 'official' .* image tokens"):
        collate_samples(processor, [_sample(tmp_path, SHORT, LONG)], columns=(0,),
                        tokenization=Tokenization("official", p, 4))


def test_logprobs_run_on_official_sequences(family, tmp_path):
    """The rebuilt ids go through the model (image tokens intact) and give finite log-probs."""
    from lpoi.train.logprobs import sequence_logps

    name, _ = family
    model, processor = load_vlm(name)
    _, batch = _ours(processor, _sample(tmp_path, SHORT, LONG), Tokenization("official", 512, 128))
    with torch.no_grad():
        lp = sequence_logps(model, batch)
    assert torch.isfinite(lp).all() and lp.shape == (3,)


# ---------------------------------------------------------------------------------------------- reference, train

def test_reference_rows_follow_the_tokenization(tmp_path):
    """A reference file made with one tokenization is never used, nor its rows reused, under the other: the
    meta says which (absent for the default, so earlier files stay valid) and every row key includes it."""
    from lpoi.train.data import load_lists, write_synthetic_lists
    from lpoi.train.reference import ReferenceError, load_reference, run_reference

    lists = write_synthetic_lists(tmp_path / "lists", n_samples=2, k=2)
    out = tmp_path / "reference.jsonl"
    official = Tokenization("official", 512, 128)
    run_reference(lists, out, model_name="tiny/llava", progress=False, tokenization=Tokenization("answer", 512))
    answer_text = out.read_text()
    assert '"tokenization"' not in answer_text.splitlines()[0]
    stats = run_reference(lists, out, model_name="tiny/llava", progress=False, tokenization=official)
    assert stats["n_computed"] == 2 and stats["n_resumed"] == 0
    assert out.read_text().splitlines()[0].count('"max_prompt_length": 128') == 1
    samples = load_lists(lists)
    with pytest.raises(ReferenceError, match="tokenization"):
        load_reference(out, samples, model_name="tiny/llava", max_length=512)
    ref_official, _, _ = load_reference(out, samples, model_name="tiny/llava", max_length=512, tokenization=official)
    (tmp_path / "answer.jsonl").write_text(answer_text)
    ref_answer, _, _ = load_reference(tmp_path / "answer.jsonl", samples, model_name="tiny/llava", max_length=512)
    assert (ref_official - ref_answer).abs().min() > 1e-3  # other ids scored: other values


def test_training_on_official_sequences_passes_the_step0_check(tmp_path):
    """reference and train build identical official sequences: at step 0 the policy's log-probs equal the
    precomputed ones (the fp32 step-0 check passes, rewards ~0) and the online reference gives the same
    first-step loss (fp32 CPU: measured equal to ~1e-7; 1e-5 allowed)."""
    from trainkw import run_train

    from lpoi.train.data import write_synthetic_lists
    from lpoi.train.reference import run_reference

    lists = write_synthetic_lists(tmp_path / "lists", n_samples=2, k=3)
    ref = tmp_path / "reference.jsonl"
    run_reference(lists, ref, model_name="tiny/llava", progress=False, tokenization=Tokenization("official", 512, 128))
    first = {}
    for reference in ("precomputed", "online"):
        out = run_train(model_name="tiny/llava", lists_path=lists, reference_path=ref, out_dir=tmp_path / reference,
                        reference=reference, tokenization="official", max_prompt_length=128, max_steps=1,
                        batch_size=2, lr=1e-3, save_steps=0, progress=False)
        first[reference] = out["history"][0]
        for col in range(3):
            assert abs(first[reference][f"reward_{col}"]) < 1e-5
    assert first["precomputed"]["loss"] == pytest.approx(first["online"]["loss"], abs=1e-5)
