"""Parameters: validation messages name the key; params.yaml is the Hydra composition of conf/'s defaults;
every profile composes into a valid parameter set."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lpoi.config import ParamsError, load_params, validate

REPO = Path(__file__).resolve().parents[1]


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def _committed():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_committed_params_equal_the_default_composition():
    assert _committed() == _compose()


@pytest.mark.parametrize("overrides,expect", [
    ((), {"model.name": "tiny/idefics2", "data.name": "sample", "bench.name": "mini"}),
    (("model=tiny-llava",), {"model.name": "tiny/llava"}),
    (("model=idefics2-8b", "data=mdpo-10k", "bench=full"),
     {"model.name": "HuggingFaceM4/idefics2-8b", "train.lr": 5e-6, "train.epochs": 3, "train.grad_accum": 64,
      "train.precision": "bf16", "train.lora.r": 8, "train.lora.alpha": 8, "data.name": "mdpo-10k",
      "detect.model": "IDEA-Research/grounding-dino-tiny", "bench.root": "data/external"}),
    (("model=llava-1.5-7b",), {"model.name": "llava-hf/llava-1.5-7b-hf", "train.epochs": 1, "train.precision": "fp16"}),
    (("model=llava-1.5-13b",), {"model.name": "llava-hf/llava-1.5-13b-hf", "train.beta": 0.1}),
])
def test_profiles_compose_and_validate(overrides, expect):
    p = validate(_compose(*overrides))
    for dotted, value in expect.items():
        obj = p
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert obj == value, dotted


def _with(**changes):
    raw = _committed()
    for dotted, value in changes.items():
        *head, last = dotted.split("__")
        d = raw
        for h in head:
            d = d[h]
        d[last] = value
    return raw


@pytest.mark.parametrize("changes,message", [
    ({"train__beta": -1}, "train.beta must be > 0, got -1"),
    ({"train__lr": 0}, "train.lr"),
    ({"train__method": "ppo"}, "train.method"),
    ({"lists__size": 1}, "lists.size"),
    ({"detect__box_threshold": 1.5}, "detect.box_threshold"),
    ({"train__epochs": "three"}, "train.epochs"),
    ({"verify__on_fail": "maybe"}, "verify.on_fail"),
])
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        validate(_with(**changes))


def test_unknown_key_is_rejected():
    raw = _committed()
    raw["train"]["betaa"] = 0.2
    with pytest.raises(ParamsError, match=r"train\.betaa: unknown key"):
        validate(raw)


def test_openai_judge_needs_a_url():
    with pytest.raises(ParamsError, match="judge.base_url is required"):
        validate(_with(judge__backend="openai"))


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(tmp_path / "p.yaml")
    assert load_params(REPO / "params.yaml").train.method == "lpoi"


def test_a_library_function_takes_the_section_or_single_settings_never_both(tmp_path):
    """Stages pass the validated section whole; tests may give single settings, which are validated the
    same way (the key is named) -- and a section plus settings that would silently override it fails."""
    from lpoi.config import DetectParams, ListsParams, section_of
    from lpoi.listgen.lists import run_lists

    d = DetectParams(box_threshold=0.5)
    assert section_of(DetectParams, d, {}) is d
    assert section_of(DetectParams, None, {"model_name": "x", "batch_size": 2}, model_name="model") == \
        DetectParams(model="x", batch_size=2)
    with pytest.raises(TypeError, match="not both"):
        section_of(DetectParams, d, {"batch_size": 2})
    with pytest.raises(TypeError, match="expected a DetectParams, got ListsParams"):
        section_of(DetectParams, ListsParams(), {})
    with pytest.raises(TypeError, match="unexpected keyword argument.*box_treshold"):
        section_of(DetectParams, None, {"box_treshold": 0.3})
    with pytest.raises(ParamsError, match="box_threshold: input should be less than or equal to 1"):
        section_of(DetectParams, None, {"box_threshold": 3})
    with pytest.raises(ParamsError, match="mode"):  # before any file is read
        run_lists(tmp_path / "p.jsonl", tmp_path / "v.jsonl", tmp_path / "out", mode="zigzag")
    with pytest.raises(TypeError, match="not both"):
        run_lists(tmp_path / "p.jsonl", tmp_path / "v.jsonl", tmp_path / "out", ListsParams(), size=3)
