"""Evaluate what was trained: in bf16 a merged adapter can be the base model; ours stays unmerged.

The adapter below is what a low-lr preference run makes, taken to its limit: every weight moves by
0.45 of the bf16 rounding step around it (in the direction that raises one answer logit, as a
gradient step would), represented exactly by a full-rank LoRA (A = identity). Merged into the bf16
base and rounded, every delta vanishes; unmerged, the float32 LoRA path adds them to the outputs.
"""

import pytest
import torch

from lpoi.eval.generate import AdapterError, load_for_generation
from lpoi.models import load_vlm
from lpoi.models.chat import encode_prompts, prompt_text

LLAVA = "tiny/llava"


def _inputs(processor, dtype):
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    enc = encode_prompts(processor, [prompt_text(processor, "What is in the picture?")], [img], padding_side="left")
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in enc.items()}


def _logits(model, processor, dtype):
    with torch.no_grad():
        return model(**_inputs(processor, dtype)).logits.float()


def _sub_ulp_adapter(folder):
    """Save the adapter described in the module docstring; return the float32 trained model (unmerged)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model, processor = load_vlm(LLAVA)
    logits = model(**_inputs(processor, torch.float32)).logits[0, -1]
    (logits[5] - logits.mean()).backward()  # the direction a step towards answer token 5 takes
    rank = max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear"))
    with torch.no_grad():
        for layer in (m for m in peft_model.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A):
            w = layer.get_base_layer().weight
            wb = w.to(torch.bfloat16)
            step = torch.minimum(torch.nextafter(wb, torch.full_like(wb, torch.inf)) - wb,
                                 wb - torch.nextafter(wb, torch.full_like(wb, -torch.inf))).float()
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            a.zero_()
            a[: w.shape[1]] = torch.eye(w.shape[1])
            b.zero_()
            b[:, : w.shape[1]] = 0.45 * step * torch.sign(grad)  # scaling alpha / r = 1
    peft_model.save_pretrained(folder)
    return peft_model.eval(), processor


def test_bf16_generation_keeps_the_adapter_unmerged(tmp_path):
    from peft import PeftModel

    trained, processor = _sub_ulp_adapter(tmp_path / "adapter")
    ours, _ = load_for_generation(LLAVA, adapter_dir=tmp_path / "adapter", dtype="bfloat16")
    plain = PeftModel.from_pretrained(load_vlm(LLAVA, dtype="bfloat16")[0], str(tmp_path / "adapter")).eval()
    base16 = load_vlm(LLAVA, dtype="bfloat16")[0]
    merged = PeftModel.from_pretrained(load_vlm(LLAVA, dtype="bfloat16")[0], str(tmp_path / "adapter"))
    merged = merged.merge_and_unload().eval()
    assert isinstance(ours, PeftModel)
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    base_weights = dict(base16.named_parameters())
    assert all(torch.equal(p, base_weights[n]) for n, p in merged.named_parameters())  # every delta vanished

    want = _logits(trained, processor, torch.float32)
    with trained.disable_adapter():
        effect = (want - _logits(trained, processor, torch.float32)).abs().mean()
    got = {name: _logits(m, processor, torch.bfloat16) for name, m in
           (("ours", ours), ("plain", plain), ("merged", merged), ("base16", base16))}
    assert torch.equal(got["ours"], got["plain"])  # our path is the unmerged PeftModel, bit for bit
    assert torch.equal(got["merged"], got["base16"])  # merge-then-cast evaluates the untrained base model
    err = {name: float((got[name] - want).abs().mean()) for name in ("ours", "merged")}
    # measured (mean |logit error|): effect 3.2e-3; ours 9.7e-4 (bf16 rounding of the base); merged 3.2e-3
    assert err["ours"] < 0.5 * err["merged"] and err["merged"] > 0.5 * float(effect)
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        enc = _inputs(processor, torch.bfloat16)
        assert torch.equal(ours.generate(**enc, **gen), plain.generate(**enc, **gen))


def test_float32_still_merges_and_merged_weights_refuse_half_precision(tmp_path):
    from peft import PeftModel

    _sub_ulp_adapter(tmp_path / "adapter")
    model, _ = load_for_generation(LLAVA, adapter_dir=tmp_path / "adapter")
    assert not isinstance(model, PeftModel)  # fp32: merged, exact enough (tests/eval/test_generate.py)
    (tmp_path / "merged").mkdir()
    with pytest.raises(AdapterError, match=r"cast to bfloat16 lose the small LoRA deltas.*model.dtype: float32"):
        load_for_generation(LLAVA, merged_dir=tmp_path / "merged", dtype="bfloat16")
