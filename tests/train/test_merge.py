"""train.merge after bf16 training writes float32 merged weights: base + adapter merged in float32, the
model the adapter describes (merging into the bf16 training weights would drop the small deltas)."""

import json

import torch

from lpoi.train.data import write_synthetic_lists
from trainkw import run_train


def test_merge_after_bf16_training_is_float32_and_equals_the_adapter(tmp_path):
    from peft import PeftModel
    from safetensors import safe_open

    from lpoi.eval.generate import load_for_generation
    from lpoi.models import load_vlm
    from lpoi.train.collate import collate_samples
    from lpoi.train.data import load_lists
    from lpoi.train.logprobs import sequence_logps

    lists = write_synthetic_lists(tmp_path / "d", n_samples=4, k=3)
    run_train(lists_path=lists, reference="online", out_dir=tmp_path / "o", model_name="tiny/llava", max_steps=2,
              batch_size=2, lr=1e-2, save_steps=0, progress=False, precision="bf16", merge=True)
    merged = tmp_path / "o" / "merged"
    dtypes = set()
    for f in merged.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            dtypes |= {st.get_slice(k).get_dtype() for k in st.keys()}
    assert dtypes == {"F32"}
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float32"

    base, processor = load_vlm("tiny/llava")
    unmerged = PeftModel.from_pretrained(base, str(tmp_path / "o" / "adapter")).eval()
    model, _ = load_for_generation("tiny/llava", merged_dir=merged)
    batch = collate_samples(processor, load_lists(lists), columns=range(3))
    with torch.no_grad():
        a, b = sequence_logps(unmerged, batch), sequence_logps(model, batch)
        with unmerged.disable_adapter():
            moved = float((a - sequence_logps(unmerged, batch)).abs().max())
    assert moved > 1e-3  # the adapter changed the model
    assert float((a - b).abs().max()) < 1e-4  # fp32 merge: float rounding only
