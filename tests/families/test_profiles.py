"""Model profiles: every conf/model preset composes into valid params; each tiny family has one."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lpoi.config import validate
from lpoi.models.tiny import VLM_FAMILIES

CONF = Path(__file__).resolve().parents[2] / "conf"
PROFILES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
HUB = {  # the families' hub checkpoints (AutoModelForImageTextToText classes in transformers >= 5)
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "gemma-3-4b": "google/gemma-3-4b-it",
    "smolvlm": "HuggingFaceTB/SmolVLM-Instruct",
}


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_model_profile_validates(profile):
    p = validate(_compose(f"model={profile}"))
    if profile.startswith("tiny-"):
        assert p.model.name == "tiny/" + profile.removeprefix("tiny-") and p.model.dtype == "float32"
    else:
        assert "/" in p.model.name and not p.model.name.startswith("tiny/")
        assert p.train.precision in ("bf16", "fp16") and p.model.dtype in ("bfloat16", "float16")


def test_each_family_has_a_tiny_and_a_hub_profile():
    assert {f"tiny-{f}" for f in VLM_FAMILIES} <= set(PROFILES)
    for profile, hub in HUB.items():
        p = validate(_compose(f"model={profile}"))
        assert p.model.name == hub and p.train.lora.exclude_vision_tower
    assert validate(_compose("model=gemma-3-4b")).model.max_pixels is None  # fixed 896 px input
    assert validate(_compose("model=qwen2.5-vl-7b")).model.max_pixels == 512 * 28 * 28
