"""Parameters: validation messages name the key; params.yaml is the Hydra composition of conf/'s defaults;
every profile composes into a valid parameter set."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lpoi.config import ParamsError, load_params, validate
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def _committed():
    return yaml.safe_load(committed("params.yaml").read_text())


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
    assert load_params(committed("params.yaml")).train.method == "lpoi"


# ---------------------------------------------------------------------------------------------- issue 19 (part B)

def _float_keys(model=None, prefix=""):
    """Every float param (``float`` or ``float | None``), by dotted path."""
    import typing

    from pydantic import BaseModel

    from lpoi.config import Params

    model = model or Params
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _float_keys(ann, f"{prefix}{name}.")
        elif ann is float or float in typing.get_args(ann):
            yield f"{prefix}{name}"


def _set(raw: dict, dotted: str, value) -> dict:
    *head, last = dotted.split(".")
    d = raw
    for h in head:
        d = d.setdefault(h, {})
    d[last] = value
    return raw


FLOAT_KEYS = sorted(_float_keys())


def test_the_float_params_are_found():
    assert {"train.beta", "train.delta", "train.lr", "world.train.beta", "generate.temperature",
            "judge.timeout"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_param_must_be_finite(key, value):
    with pytest.raises(ParamsError, match=rf"\n{key.replace('.', '[.]')}: input should be a finite number"):
        validate(_set(_committed(), key, value))


def test_yaml_spellings_of_infinity_are_refused(tmp_path):
    (tmp_path / "p.yaml").write_text("train: {beta: .inf, delta: .nan, lr: .inf}\n")
    with pytest.raises(ParamsError) as e:
        load_params(tmp_path / "p.yaml")
    assert [line.split(":")[0] for line in str(e.value).splitlines()[1:]] == ["train.beta", "train.delta", "train.lr"]


@pytest.mark.parametrize("key,value", [
    ("lists.size", 17), ("train.batch_size", 10**5), ("train.micro_batch_sequences", 10**5),
    ("reference.micro_batch_sequences", 10**5), ("detect.batch_size", 8000), ("segment.batch_size", 8000),
    ("verify.batch_size", 8000), ("generate.batch_size", 8000), ("judge.batch_size", 8000),
    ("generate.max_new_tokens", 10**6), ("judge.max_new_tokens", 10**6), ("world.eval.max_new_tokens", 10**6),
    ("train.lr", 5e6), ("world.pretrain.lr", 2e3), ("detect.box_threshold", 35), ("detect.text_threshold", 25),
    ("reference.max_length", 10**7), ("train.num_workers", 1000),
])
def test_typos_in_sizes_are_caught_by_upper_bounds(key, value):
    with pytest.raises(ParamsError, match=rf"\n{key.replace('.', '[.]')}: input should be less than or equal to"):
        validate(_set(_committed(), key, value))


def test_the_largest_sizes_in_bounds_pass():
    raw = _committed()
    for key, value in (("lists.size", 16), ("train.batch_size", 1024), ("generate.max_new_tokens", 16384),
                       ("train.lr", 1.0)):
        _set(raw, key, value)
    validate(raw)


SEED_KEYS = ["seed", "train.seed", "world.seed", "world.pretrain.seed", "world.train.seed"]


@pytest.mark.parametrize("key", SEED_KEYS)
@pytest.mark.parametrize("value", [-1, 2**32])
def test_every_seed_names_its_key(key, value):
    with pytest.raises(ParamsError, match=rf"\n{key.replace('.', '[.]')}: input should be"):
        validate(_set(_committed(), key, value))


def test_grid_seeds_name_the_bad_one():
    with pytest.raises(ParamsError, match=r"world\.study\.seeds\.1: input should be greater than or equal to 0, got -1"):
        validate(_set(_committed(), "world.study.seeds", [0, -1]))


@pytest.mark.parametrize("weights,method,keys", [
    ({"dpo": 0, "list": 0, "anchor": 0}, "lpoi", "train.weights.dpo, train.weights.list and train.weights.anchor are all 0"),
    ({"dpo": 0.0, "list": 0.0, "anchor": 0.0}, "mdpo", "train.weights.dpo, train.weights.list and train.weights.anchor"),
    ({"dpo": 0, "list": 1, "anchor": 1}, "dpo", "train.weights.dpo is 0: method 'dpo'"),  # dpo uses the text pair only
])
def test_an_objective_that_trains_nothing_is_refused(weights, method, keys):
    with pytest.raises(ParamsError, match="would train nothing") as e:
        validate(_set(_set(_committed(), "train.weights", weights), "train.method", method))
    assert keys in str(e.value) and len(str(e.value).splitlines()) == 2


@pytest.mark.parametrize("weights,method", [({"dpo": 1, "list": 0, "anchor": 0}, "dpo"),
                                            ({"dpo": 0, "list": 0, "anchor": 1}, "lpoi"),
                                            ({"dpo": 0, "list": 1, "anchor": 0}, "mdpo")])
def test_an_objective_with_one_active_term_passes(weights, method):
    validate(_set(_set(_committed(), "train.weights", weights), "train.method", method))


def test_the_world_study_refuses_a_method_its_weights_leave_empty():
    """Each method of the study carries its own weights: dpo uses only weights.dpo, list_only only weights.list."""
    raw = _set(_committed(), "world.study.methods.dpo.weights", {"dpo": 0, "list": 1, "anchor": 1})
    with pytest.raises(ParamsError, match=r"world\.study\.methods\.dpo\.weights\.dpo is 0: method 'dpo'"):
        validate(raw)
    validate(_set(raw, "world.study.methods.dpo.weights", {"dpo": 0.5, "list": 0, "anchor": 0}))


def test_method_terms_are_the_terms_the_loss_adds_up():
    """lpoi.config.METHOD_TERMS (which weights a method uses) agrees with the loss itself."""
    import torch

    from lpoi.config import METHOD_TERMS
    from lpoi.train.losses import LOSS_TERMS, preference_loss

    pol, ref = torch.tensor([[-3.0, -4.0, -5.0]]), torch.tensor([[-3.5, -3.9, -4.2]])
    for method, terms in METHOD_TERMS.items():
        out = preference_loss(method, policy_list_logps=pol, policy_rejected_logps=torch.tensor([-6.0]),
                              reference_list_logps=ref, reference_rejected_logps=torch.tensor([-5.0]), beta=0.1)
        assert set(terms) == set(out) & set(LOSS_TERMS), method
        unused = {t: (0.0 if t in terms else 1.0) for t in LOSS_TERMS}  # weight only what the method ignores
        zero = preference_loss(method, policy_list_logps=pol, policy_rejected_logps=torch.tensor([-6.0]),
                               reference_list_logps=ref, reference_rejected_logps=torch.tensor([-5.0]), beta=0.1,
                               weights=unused)
        assert zero["loss"].item() == 0.0, method


@pytest.mark.parametrize("device", ["banana", "gpu", "cuda:", "cuda:x", "CPU", ""])
def test_an_unknown_device_names_the_accepted_ones(device):
    with pytest.raises(ParamsError, match=r"\nmodel\.device must be auto, cpu, cuda, cuda:<index> or mps, got"):
        validate(_set(_committed(), "model.device", device))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_pass_validation(device):
    assert validate(_set(_committed(), "model.device", device)).model.device == device


@pytest.mark.parametrize("key", ["data.images", "data.pairs"])
@pytest.mark.parametrize("path", ["/etc", "/work/data/images", "~/images", "data/../../etc", "data", "images",
                                  "../data/x"])
def test_data_paths_are_confined_to_data(key, path):
    with pytest.raises(ParamsError, match=rf"\n{key.replace('.', '[.]')} must be a path under data/ in the repository"):
        validate(_set(_committed(), key, path))


def test_data_paths_under_data_pass():
    raw = _set(_set(_committed(), "data.images", "data/external/mdpo-10k/images"), "data.pairs", "./data/x/p.jsonl")
    validate(raw)


def test_cross_key_messages_name_keys_by_their_full_path_without_the_section_dump():
    with pytest.raises(ParamsError) as e:
        validate(_set(_committed(), "world.model.image_size", 50))
    assert str(e.value).splitlines()[1] == ("world.model.image_size (50) must be a multiple of world.model.patch_size "
                                            "(8)")


def test_an_unknown_profile_is_named_with_the_profiles(monkeypatch):
    """Hydra composition in-process (tests, notebooks) goes through the same plugin as `dvc exp run -S`."""
    # the plugin lives at the repository root (not in the installed package): importable from there, as DVC
    # imports it when it composes in the repository; `pytest` (unlike `python -m pytest`) does not put it on the path
    monkeypatch.syspath_prepend(str(REPO))
    import hydra_plugins.lpoi_params  # noqa: F401 - installs the check (Hydra's plugin scan does this under dvc)
    from hydra.errors import HydraException

    try:
        from dvc.exceptions import DvcException
    except ImportError:
        DvcException = HydraException
    with pytest.raises((DvcException, HydraException), match=r"^model=nope is not a profile; profiles: .*tiny-llava"):
        _compose("model=nope")


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
