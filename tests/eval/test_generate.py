"""Batched, resumable generation (lpoi.eval.generate) on the tiny real models and real image files."""

import json

import pytest
import torch
from PIL import Image

from lpoi.eval.generate import AdapterError, generate_answers, load_for_generation
from lpoi.models import load_vlm
from lpoi.models.chat import encode_prompts, prompt_text, yes_no_token_ids

# Questions of clearly different token lengths, so left padding matters in a batch.
QUESTIONS = [
    "Describe this image.",
    "Is there a dog sitting on the grass near a bench in this image?",
    "What color?",
    "How many objects are there in the picture on the left of the table?",
    "Where is it?",
]


@pytest.fixture(scope="module")
def models():
    return {name: load_vlm(name) for name in ("tiny/idefics2", "tiny/llava")}


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.new("RGB", (40 + 10 * i, 30 + 7 * i), (40 * i, 200 - 30 * i, 30 + 20 * i)).save(p)
        paths.append(str(p))
    return paths


def _items(tmp_path, questions=QUESTIONS):
    paths = _images(tmp_path / "images", len(questions))
    return [{"id": 100 + i, "image": paths[i], "question": q, "image_id": 7000 + i} for i, q in enumerate(questions)]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _count_generate(monkeypatch, model):
    """Wrap model.generate to record the batch size of every call (the real generate still runs)."""
    calls = []
    real = model.generate

    def counting(*args, **kw):
        calls.append(kw["input_ids"].shape[0])
        return real(*args, **kw)

    monkeypatch.setattr(model, "generate", counting)
    return calls


# ----------------------------------------------------------------------------------- batched = single


@pytest.mark.parametrize("name", ["tiny/idefics2", "tiny/llava"])
def test_greedy_batched_equals_batch_of_one(tmp_path, models, name):
    model, proc = models[name]
    items = _items(tmp_path)
    lengths = {len(proc.tokenizer(prompt_text(proc, q)).input_ids) for q in QUESTIONS}
    assert len(lengths) >= 3  # the prompts really differ in length, so a batch is left-padded

    s8 = generate_answers(model, proc, items, tmp_path / "b8.jsonl", batch_size=8, max_new_tokens=12, progress=False)
    s1 = generate_answers(model, proc, items, tmp_path / "b1.jsonl", batch_size=1, max_new_tokens=12, progress=False)
    b8, b1 = _rows(tmp_path / "b8.jsonl"), _rows(tmp_path / "b1.jsonl")
    assert [r["id"] for r in b8] == [it["id"] for it in items]  # input order
    assert b8 == b1
    assert any(r["response"] for r in b8)
    assert s8["n_generated"] == s1["n_generated"] == len(items)

    # The stored response is only the new tokens: the naive single-prompt generate, sliced by hand.
    for it, row in zip(items, b1):
        enc = encode_prompts(proc, [prompt_text(proc, it["question"])], [Image.open(it["image"]).convert("RGB")])
        with torch.no_grad():
            full = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id)[0]
        n_prompt = enc["input_ids"].shape[1]
        assert row["response"] == proc.tokenizer.decode(full[n_prompt:], skip_special_tokens=True).strip()
        assert it["question"] not in row["response"]
        assert row["image_id"] == it["image_id"] and "image" not in row  # extras copied, the image path not

    # The comparison above can fail: with *right* padding the same batch gives other answers.
    enc = encode_prompts(proc, [prompt_text(proc, q) for q in QUESTIONS],
                         [Image.open(it["image"]).convert("RGB") for it in items], padding_side="right")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id)
    wrong = [proc.tokenizer.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]
    assert wrong != [r["response"] for r in b1]


def test_fixed_length_token_count_and_limit(tmp_path, models):
    """min_new_tokens = max_new_tokens forbids an early end, so exactly 3 items x 6 tokens = 18 are new."""
    model, proc = models["tiny/llava"]
    stats = generate_answers(model, proc, _items(tmp_path), tmp_path / "a.jsonl", batch_size=2, max_new_tokens=6,
                             limit=3, progress=False, extra_generate_kwargs={"min_new_tokens": 6})
    assert stats["n_items"] == 3 and stats["n_generated"] == 3
    assert stats["n_new_tokens"] == 18
    assert stats["new_tokens_per_s"] == pytest.approx(18 / stats["seconds"], rel=0.01)
    assert len(_rows(tmp_path / "a.jsonl")) == 3


# ----------------------------------------------------------------------------------- resume


def test_resume_skips_finished_ids_and_matches_uninterrupted(tmp_path, models, monkeypatch):
    model, proc = models["tiny/idefics2"]
    items = _items(tmp_path)
    generate_answers(model, proc, items, tmp_path / "full.jsonl", batch_size=2, max_new_tokens=8, progress=False)

    part = tmp_path / "part.jsonl"
    first = generate_answers(model, proc, items, part, batch_size=2, max_new_tokens=8, limit=3, progress=False)
    assert first["n_generated"] == 3
    with open(part, "a") as f:  # a kill mid-write leaves half a line behind
        f.write('{"id": 103, "question": "How ma')

    calls = _count_generate(monkeypatch, model)
    second = generate_answers(model, proc, items, part, batch_size=2, max_new_tokens=8, progress=False)
    assert second["n_skipped"] == 3 and second["n_generated"] == 2
    assert sum(calls) == 2  # only ids 103 and 104 reached the model
    assert part.read_bytes() == (tmp_path / "full.jsonl").read_bytes()

    calls.clear()
    third = generate_answers(model, proc, items, part, batch_size=2, max_new_tokens=8, progress=False)
    assert third["n_skipped"] == 5 and third["n_generated"] == 0 and calls == []


def test_resume_in_logits_mode_is_byte_identical(tmp_path, models):
    """Yes/no log-probs depend on the batch mates in their last bits (left padding changes the shapes), so
    a partly finished block of yes/no items is recomputed whole: the resumed file is the same bytes."""
    model, proc = models["tiny/llava"]
    its = _items(tmp_path)
    items = [{**it, "yes_no": True} for it in [its[1], its[0], *its[2:]]]  # blocks [101, 100] [102, 103] [104]
    kw = {"batch_size": 2, "max_new_tokens": 4, "yes_no": "logits", "progress": False}
    generate_answers(model, proc, items, tmp_path / "full.jsonl", **kw)
    generate_answers(model, proc, items[1:2], tmp_path / "alone.jsonl", **kw)  # id 100 without its batch mate
    alone, full = _rows(tmp_path / "alone.jsonl")[0], _rows(tmp_path / "full.jsonl")[1]
    # the same answer, but (torch 2.14 CPU) not the same float: 4.8e-7 apart -- what makes this test bite
    assert alone["logprob_yes"] == pytest.approx(full["logprob_yes"], abs=1e-5)
    part = tmp_path / "part.jsonl"
    generate_answers(model, proc, items, part, limit=1, **kw)  # stops inside block [101, 100]
    again = generate_answers(model, proc, items, part, **kw)
    assert again["n_skipped"] == 1 and again["n_logits"] == 4
    assert part.read_bytes() == (tmp_path / "full.jsonl").read_bytes()  # resumed: the same bytes


# ----------------------------------------------------------------------------------- yes/no by logits


def test_logits_mode_per_item(tmp_path, models, monkeypatch):
    model, proc = models["tiny/llava"]
    items = _items(tmp_path)
    for it in items[1:]:
        it["yes_no"] = True  # item 0 is generative, the other four are yes/no questions
    calls = _count_generate(monkeypatch, model)
    stats = generate_answers(model, proc, items, tmp_path / "a.jsonl", batch_size=8, max_new_tokens=5,
                             yes_no="logits", progress=False)
    rows = _rows(tmp_path / "a.jsonl")
    assert calls == [1]  # one generate call, for the generative item only
    assert stats["n_logits"] == 4 and stats["n_generated"] == 5
    assert "logprob_yes" not in rows[0] and "yes_no" not in rows[0]

    yes_id, no_id = yes_no_token_ids(proc)
    for it, row in zip(items[1:], rows[1:]):
        # independent reference: a batch-of-one forward with all logits, last prompt position
        enc = encode_prompts(proc, [prompt_text(proc, it["question"])], [Image.open(it["image"]).convert("RGB")])
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0, -1].double(), dim=-1)
        assert row["logprob_yes"] == pytest.approx(float(logp[yes_id]), abs=1e-4)
        assert row["logprob_no"] == pytest.approx(float(logp[no_id]), abs=1e-4)
        assert row["response"] == ("Yes" if logp[yes_id] > logp[no_id] else "No")

    # yes_no=None generates the flagged items too (the scorer parses them later)
    calls.clear()
    generate_answers(model, proc, items, tmp_path / "g.jsonl", batch_size=8, max_new_tokens=5, progress=False)
    assert calls == [5] and all("logprob_yes" not in r for r in _rows(tmp_path / "g.jsonl"))


def test_yes_no_token_ids_read_once_per_job_and_only_for_logits(tmp_path, models, monkeypatch):
    from lpoi.models import chat

    model, proc = models["tiny/llava"]
    calls = []
    real = chat.yes_no_token_ids
    monkeypatch.setattr(chat, "yes_no_token_ids", lambda p: calls.append(1) or real(p))
    items = _items(tmp_path)
    generate_answers(model, proc, items, tmp_path / "g.jsonl", batch_size=2, max_new_tokens=2,
                     yes_no="logits", progress=False)
    assert calls == []  # no yes/no item: the logits mode's tokens are never read
    for it in items:
        it["yes_no"] = True
    stats = generate_answers(model, proc, items, tmp_path / "a.jsonl", batch_size=2, max_new_tokens=2,
                             yes_no="logits", progress=False)
    assert stats["n_logits"] == 5 and calls == [1]  # three logits blocks, one read


# ----------------------------------------------------------------------------------- bad inputs


def test_bad_images_are_recorded_not_crashed(tmp_path, models):
    model, proc = models["tiny/llava"]
    items = _items(tmp_path, QUESTIONS[:3])
    good = Image.new("RGB", (64, 64), (1, 2, 3))
    good.save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    items[0]["image"] = str(tmp_path / "nope.png")
    items[2]["image"] = str(tmp_path / "trunc.png")
    items.append({"id": 200, "image": good, "question": "What color?"})  # a PIL image is accepted too

    stats = generate_answers(model, proc, items, tmp_path / "a.jsonl", batch_size=8, max_new_tokens=4, progress=False)
    rows = _rows(tmp_path / "a.jsonl")
    assert [r["id"] for r in rows] == [100, 101, 102, 200]
    assert rows[0]["error"] == "missing" and rows[0]["response"] == ""
    assert rows[2]["error"] == "truncated" and rows[2]["response"] == ""
    assert "error" not in rows[1] and "error" not in rows[3]
    assert stats["n_errors"] == 2 and stats["errors"] == {"missing": 1, "truncated": 1}
    assert stats["n_generated"] == 2

    # fix one image, retry the error rows only
    Image.new("RGB", (50, 40), (9, 9, 9)).save(tmp_path / "nope.png")
    again = generate_answers(model, proc, items, tmp_path / "a.jsonl", max_new_tokens=4, progress=False,
                             retry_errors=True)
    assert again["n_skipped"] == 2 and again["n_generated"] == 1 and again["errors"] == {"truncated": 1}
    by_id = {r["id"]: r for r in _rows(tmp_path / "a.jsonl")}
    assert len(by_id) == 4 and "error" not in by_id[100]


@pytest.mark.parametrize(
    "change,kwargs,match",
    [
        (lambda its: its.append(dict(its[0])), {}, "appears twice"),
        (lambda its: its[1].pop("question"), {}, "'question' must be"),
        (lambda its: its[1].update(response="x"), {}, "written by the generator"),
        (lambda its: None, {"yes_no": "maybe"}, "yes_no must be"),
        (lambda its: None, {"batch_size": 0}, "batch_size: input should be greater than or equal to 1"),
        (lambda its: None, {"extra_generate_kwargs": {"max_new_tokens": 3}}, "must not repeat"),
    ],
)
def test_invalid_inputs_fail_clearly(tmp_path, models, change, kwargs, match):
    model, proc = models["tiny/llava"]
    items = _items(tmp_path, QUESTIONS[:2])
    change(items)
    with pytest.raises(ValueError, match=match):
        generate_answers(model, proc, items, tmp_path / "a.jsonl", max_new_tokens=2, progress=False, **kwargs)


# ----------------------------------------------------------------------------------- adapters


def _save_random_lora(name, folder, target_modules):
    """A LoRA adapter with non-zero B (peft initialises B = 0, which would be a no-op)."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_vlm(name)
    torch.manual_seed(0)  # lora_A comes from the global RNG: fixed, so the outcome never depends on test order
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(folder)
    return peft_model


def test_adapter_changes_outputs_and_equals_merged(tmp_path, models):
    name = "tiny/llava"
    adapter = tmp_path / "adapter"
    peft_model = _save_random_lora(name, adapter, ["q_proj", "v_proj", "o_proj", "gate_proj"])
    assert (adapter / "adapter_model.safetensors").is_file()
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")  # weights only: processor from the name

    base = models[name]
    loaded = {
        "adapter": load_for_generation(name, adapter_dir=adapter),
        "unmerged": load_for_generation(name, adapter_dir=adapter, merge=False),
        "merged": load_for_generation(name, merged_dir=tmp_path / "merged"),
    }
    items = _items(tmp_path)
    for it in items[3:]:
        it["yes_no"] = True
    out = {}
    for key, (model, proc) in [("base", base), *loaded.items()]:
        generate_answers(model, proc, items, tmp_path / f"{key}.jsonl", max_new_tokens=10, yes_no="logits",
                         progress=False)
        out[key] = _rows(tmp_path / f"{key}.jsonl")
    assert [r["response"] for r in out["adapter"]] == [r["response"] for r in out["merged"]]
    assert [r["response"] for r in out["unmerged"]] == [r["response"] for r in out["merged"]]
    for a, m, b in zip(out["adapter"][3:], out["merged"][3:], out["base"][3:]):
        assert a["logprob_yes"] == pytest.approx(m["logprob_yes"], abs=1e-4)
        assert abs(a["logprob_yes"] - b["logprob_yes"]) > 1e-3  # the adapter really changed the model
    assert [r["response"] for r in out["adapter"][:3]] != [r["response"] for r in out["base"][:3]]


def test_adapter_errors(tmp_path):
    with pytest.raises(AdapterError, match="adapter folder not found"):
        load_for_generation("tiny/llava", adapter_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        load_for_generation("tiny/llava", adapter_dir=tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="adapter weights missing"):
        load_for_generation("tiny/llava", adapter_dir=tmp_path / "noweights")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "adapter_config.json").write_text("{nope")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_for_generation("tiny/llava", adapter_dir=tmp_path / "badjson")
    # an adapter on Idefics2's perceiver resampler has no module to land on in LLaVA
    _save_random_lora("tiny/idefics2", tmp_path / "idefics2-adapter", r".*perceiver_resampler.*q_proj")
    with pytest.raises(AdapterError, match="onto the base model|does not fit"):
        load_for_generation("tiny/llava", adapter_dir=tmp_path / "idefics2-adapter")
    with pytest.raises(AdapterError, match="merged model folder not found"):
        load_for_generation("tiny/llava", merged_dir=tmp_path / "nomerged")
    with pytest.raises(ValueError, match="either adapter_dir or merged_dir"):
        load_for_generation("tiny/llava", adapter_dir=tmp_path, merged_dir=tmp_path)
