"""The paper presets (conf/experiment/paper-*.yaml): one ``-S experiment=...`` gives the authors' setup.

Every value is pinned to the official one it cites (github fatemehpesaran310/lpoi @ 7008d7c, as read in
../shared/paper/OFFICIAL_SETUP.md); compositions go through Hydra's compose API as ``dvc exp run -S`` does.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lpoi.config import validate

REPO = Path(__file__).resolve().parents[1]

# (key, idefics2-8b, llava-1.5-7b, llava-1.5-13b, official source)
OFFICIAL = [
    ("model.name", "HuggingFaceM4/idefics2-8b", "llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf",
     "lpoi.py / lpoi_llava7b.py / lpoi_llava13b.py"),
    ("model.dtype", "bfloat16", "float16", "float16", "scripts: bf16=True / weights loaded in float16"),
    ("train.precision", "bf16", "fp16", "fp16", "scripts"),
    ("train.lr", 5e-6, 5e-5, 5e-5, "lpoi.py learning_rate; LLaVA scripts none -> TrainingArguments 5e-5"),
    ("train.epochs", 3, 1, 1, "scripts num_train_epochs"),
    ("train.max_steps", None, None, None, "scripts: epochs only"),
    ("train.scheduler", "linear", "linear", "linear", "TrainingArguments default"),
    ("train.warmup_ratio", 0.0, 0.0, 0.0, "TrainingArguments default"),
    ("train.weight_decay", 0.0, 0.0, 0.0, "TrainingArguments default"),
    ("train.max_grad_norm", 1.0, 1.0, 1.0, "TrainingArguments default"),
    ("train.seed", 42, 42, 42, "TrainingArguments default"),
    ("train.batch_size", 1, 1, 1, "scripts per_device_train_batch_size"),
    ("train.grad_accum", 64, 64, 64, "scripts gradient_accumulation_steps"),
    ("train.method", "lpoi", "lpoi", "lpoi", "lpoi_dpo_trainer_5img.py"),
    ("train.beta", 0.1, 0.1, 0.1, "lpoi_dpo_config.py"),
    ("train.delta", 0.0, 0.0, 0.0, "lpoi_dpo_trainer_5img.py anchor"),
    ("train.weights.dpo", 1.0, 1.0, 1.0, "lpoi_dpo_trainer_5img.py ~L1874-1880"),
    ("train.weights.list", 1.0, 1.0, 1.0, "lpoi_dpo_trainer_5img.py ~L1874-1880"),
    ("train.weights.anchor", 1.0, 1.0, 1.0, "lpoi_dpo_trainer_5img.py ~L1874-1880"),
    ("train.reference", "online", "online", "online", "lpoi_dpo_trainer_5img.py ~L1801-1823"),
    ("train.disable_dropout", True, True, True, "lpoi_dpo_config.py disable_dropout"),
    ("train.lora.r", 8, 8, 8, "scripts LoraConfig: PEFT default"),
    ("train.lora.alpha", 8, 8, 8, "scripts LoraConfig: PEFT default"),
    ("train.lora.dropout", 0.0, 0.0, 0.0, "scripts LoraConfig: PEFT default"),
    ("train.lora.target_modules", "all-linear", "all-linear", "all-linear", "scripts LoraConfig"),
    ("train.lora.exclude_vision_tower", False, False, False, "all-linear: image side included"),
    ("data.name", "mdpo-10k", "mdpo-10k", "mdpo-10k", "README: sample_10k_llava.json"),
    ("bench.name", "full", "full", "full", "paper Table 1"),
    ("lists.size", 5, 5, 5, "lpoi.py ours_cmask_until{25,50,75,100}"),
    ("lists.mode", "progressive", "progressive", "progressive", "paper Alg. 1"),
    ("lists.mask", "bbox", "bbox", "bbox", "paper Alg. 1"),
    ("lists.fill", "black", "black", "black", "box masks with black fill"),
    ("lists.highlight", True, True, True, "paper Alg. 1 Highlight"),
    ("verify.enabled", True, True, True, "paper Alg. 1 filtering"),
    ("verify.model", "HuggingFaceM4/idefics2-8b", "HuggingFaceM4/idefics2-8b", "HuggingFaceM4/idefics2-8b",
     "filtering model"),
    ("detect.model", "IDEA-Research/grounding-dino-tiny", "IDEA-Research/grounding-dino-tiny",
     "IDEA-Research/grounding-dino-tiny", "Grounding-DINO-Tiny"),
    ("generate.do_sample", False, False, False, "generate-idefics-lpoi-amber.py greedy"),
    ("generate.num_beams", 1, 1, 1, "generate-idefics-lpoi-amber.py greedy"),
    ("generate.max_new_tokens", 500, 500, 500, "generate-idefics-lpoi-amber.py"),
    ("generate.batch_size", 1, 1, 1, "generate-idefics-lpoi-amber.py batch 1"),
    ("generate.use_adapter", True, True, True, "model.load_adapter"),
    ("amber.discriminative", "generate", "generate", "generate", "generate-idefics-lpoi-amber.py"),
    ("amber.yes_no", "paper", "paper", "paper", "generate-idefics-lpoi-amber.py substring rule, prompt included"),
    ("amber.similarity", "spacy-lg", "spacy-lg", "spacy-lg", "AMBER inference.py"),
    ("objhal.extractor", "llm", "llm", "llm", "RLHF-V eval_gpt_obj_halbench.py --use_gpt"),
    ("judge.backend", "openai", "openai", "openai", "LLaVA-RLHF eval_gpt_mmhal.py"),
    ("judge.model", None, None, None, "null: the authors' judges (LLaVA-RLHF eval_gpt_mmhal.py gpt-4-0314)"),
    ("objhal.model", None, None, None, "null: RLHF-V --use_gpt's gpt-3.5-turbo-0613"),
    ("reference.tokenization", "official", "official", "official", "lpoi.py ~L96-98, trainer _build_tokenized_answer"),
    ("reference.max_length", 512, 512, 512, "trainer default max_length ~L723-742"),
    ("reference.max_prompt_length", 128, 128, 128, "trainer default max_prompt_length ~L723-742"),
]
PRESETS = ("paper-idefics2-8b", "paper-llava-1.5-7b", "paper-llava-1.5-13b")
TINY = ("model=tiny-llava", "data=sample", "bench=mini", "verify.model=null", "judge.backend=hf",
        "judge.model=tiny/llama", "judge.base_url=null", "train.precision=fp32", "model.dtype=float32")


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def _get(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_values_are_the_official_ones(preset):
    p = validate(_compose(f"experiment={preset}"))
    col = 1 + PRESETS.index(preset)
    wrong = [f"{row[0]}: {_get(p, row[0])!r} != official {row[col]!r} ({row[4]})" for row in OFFICIAL
             if _get(p, row[0]) != row[col]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_value_cites_its_source(preset):
    lines = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text().splitlines()
    body = [ln for ln in lines if ln and not ln.lstrip().startswith("#") and ":" in ln
            and not ln.rstrip().endswith(":") and not ln.startswith(("defaults", "  - _self_"))]
    assert body and all("  # " in ln for ln in body), [ln for ln in body if "  # " not in ln]


def test_experiment_none_changes_nothing():
    assert _compose("experiment=none") == _compose()


def test_preset_with_tiny_models_validates():
    p = validate(_compose("experiment=paper-llava-1.5-7b", *TINY))
    assert (p.model.name, p.data.name, p.bench.name, p.verify.model) == ("tiny/llava", "sample", "mini", None)
    # the recipe stays the paper's
    assert (p.train.lr, p.train.epochs, p.train.scheduler, p.lists.mask, p.lists.highlight) == \
        (5e-5, 1, "linear", "bbox", True)


def test_paper_base_model_offline_is_a_one_line_model_not_found(monkeypatch):
    import huggingface_hub.constants as hub_constants

    from lpoi.models import ModelNotFound, load_vlm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    name = validate(_compose("experiment=paper-llava-1.5-7b")).model.name
    with pytest.raises(ModelNotFound) as e:
        load_vlm(name)
    assert name in str(e.value) and "\n" not in str(e.value).strip()


def test_disable_dropout_zeroes_every_dropout():
    import torch

    from lpoi.train.lora import disable_dropout

    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    assert disable_dropout(m) == 2
    m.train()
    x = torch.ones(64, 4)
    assert torch.equal(m(x), m(x))  # no dropout left in training mode
    assert all(d.p == 0 for d in m.modules() if isinstance(d, torch.nn.Dropout))


def test_paper_params_file_loads_offline_as_a_stage_reads_it(tmp_path):
    """What `dvc exp run -S experiment=paper-llava-1.5-7b` writes to params.yaml, read back by load_params."""
    import yaml

    from lpoi.config import load_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_compose("experiment=paper-llava-1.5-7b"), sort_keys=False))
    p = load_params(tmp_path / "params.yaml")
    assert (p.train.lr, p.train.epochs, p.train.scheduler) == (5e-5, 1, "linear")
    assert (p.lists.mask, p.lists.highlight, p.verify.model) == ("bbox", True, "HuggingFaceM4/idefics2-8b")
    assert (p.amber.discriminative, p.amber.yes_no) == ("generate", "paper")
    assert (p.reference.tokenization, p.train.reference) == ("official", "online")
    assert p.judge.model_for("mmhal") == "gpt-4-0314"
    assert p.judge.model_for("objhal", p.objhal.model) == "gpt-3.5-turbo-0613"
