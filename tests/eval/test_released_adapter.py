"""``generate.adapter``: evaluate any peft adapter without training (the LPOI authors' released checkpoints).

The adapter is a real one in peft's own format (``save_pretrained``), made on the tiny LLaVA with the paper's
LoRA (all-linear, r 8, alpha 8) and non-zero B, saved one folder down as a released zip unpacks."""

import pytest
import torch

from lpoi.eval.generate import AdapterError, find_adapter, load_for_generation
from lpoi.models import load_vlm
from lpoi.models.chat import encode_prompts, prompt_text

LLAVA = "tiny/llava"


def _logits(model, processor):
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    enc = encode_prompts(processor, [prompt_text(processor, "What is in the picture?")], [img], padding_side="left")
    with torch.no_grad():
        return model(**enc).logits.float()


def _released(folder):
    from peft import LoraConfig, get_peft_model

    model, processor = load_vlm(LLAVA)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: B is no longer zero
    peft_model.save_pretrained(folder)
    return peft_model.eval(), processor


def test_a_released_adapter_is_found_below_its_folder_and_evaluated(tmp_path):
    trained, processor = _released(tmp_path / "checkpoint" / "lpoi_llava7b")
    assert (tmp_path / "checkpoint" / "lpoi_llava7b" / "adapter_model.safetensors").is_file()
    folder = find_adapter(tmp_path / "checkpoint")
    assert folder == tmp_path / "checkpoint" / "lpoi_llava7b"
    model, proc = load_for_generation(LLAVA, adapter_dir=folder, device="cpu")
    base, _ = load_for_generation(LLAVA, device="cpu")
    ours, ref = _logits(model, proc), _logits(trained, processor)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)  # the adapter as saved, nothing lost
    assert (ours - _logits(base, proc)).abs().max() > 1e-3  # and it changes the model


def test_adapter_folder_errors_are_one_line(tmp_path):
    with pytest.raises(AdapterError, match="no such folder"):
        find_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="holds no peft adapter"):
        find_adapter(tmp_path / "empty")
    for name in ("a", "b"):
        (tmp_path / "two" / name).mkdir(parents=True)
        (tmp_path / "two" / name / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="holds 2 adapters"):
        find_adapter(tmp_path / "two")


def test_generate_adapter_param_composes_with_a_paper_preset():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lpoi.config import validate

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        adapter = "generate.adapter=models/external/lpoi-official-llava-1.5-7b/adapter"
        raw = compose(config_name="config", overrides=["experiment=paper-llava-1.5-7b", adapter])
    p = validate(OmegaConf.to_container(raw, resolve=True))
    assert p.generate.adapter == "models/external/lpoi-official-llava-1.5-7b/adapter" and p.generate.use_adapter


def test_an_adapter_saved_under_the_older_llava_layout_loads_renamed(tmp_path):
    """The authors trained LLaVA under transformers 4.43, whose LlavaForConditionalGeneration held
    ``language_model.model.layers``, ``vision_tower`` and ``multi_modal_projector`` directly; transformers 5 nests
    them in ``model``. The same adapter under the old names must give the same model."""
    import json

    from safetensors.torch import load_file, save_file

    _released(tmp_path / "new")
    new = load_file(str(tmp_path / "new" / "adapter_model.safetensors"))
    old_names = {k: k.replace("base_model.model.model.language_model.", "base_model.model.language_model.model.")
                 .replace("base_model.model.model.vision_tower.", "base_model.model.vision_tower.")
                 .replace("base_model.model.model.multi_modal_projector.", "base_model.model.multi_modal_projector.")
                 for k in new}
    assert sum(a != b for a, b in old_names.items()) == len(new)  # every tensor had a name to change
    (tmp_path / "old").mkdir()
    save_file({old_names[k]: v for k, v in new.items()}, str(tmp_path / "old" / "adapter_model.safetensors"))
    cfg = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    (tmp_path / "old" / "adapter_config.json").write_text(json.dumps(cfg))
    ref, processor = load_for_generation(LLAVA, adapter_dir=tmp_path / "new", device="cpu")
    old, _ = load_for_generation(LLAVA, adapter_dir=tmp_path / "old", device="cpu")
    torch.testing.assert_close(_logits(old, processor), _logits(ref, processor), rtol=0, atol=0)
    # names that no known layout explains still stop with the one-line mismatch
    save_file({k.replace("layers.", "blocks."): v for k, v in new.items()}, str(tmp_path / "old" / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="does not fit the base model"):
        load_for_generation(LLAVA, adapter_dir=tmp_path / "old", device="cpu")
