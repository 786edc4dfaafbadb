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
