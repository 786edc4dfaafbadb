"""Typed parameter sections of ``params.yaml``, validated when a stage starts.

One section per stage (the example-get-started layout); profiles in ``conf/`` only change values.
An unknown key, a wrong type or an out-of-range value fails at once with a message naming the key,
e.g. ``train.beta must be > 0, got -1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ParamsError", "Params", "load_params"]


class ParamsError(ValueError):
    """params.yaml does not validate; the message lists every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class ModelParams(_Section):
    name: str = "tiny/idefics2"
    """Base VLM: ``tiny/idefics2`` | ``tiny/llava`` | a hub id (``HuggingFaceM4/idefics2-8b``) | a local folder."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for the inference stages (reference, verify, generate)."""
    device: str = "auto"
    """``auto`` = cuda when available, else cpu."""
    trust_remote_code: bool = False
    """Off by default: enable only for models you have audited."""


class DataParams(_Section):
    name: str = "sample"
    pairs: str = "data/sample/pairs.json"
    """Pairwise preferences, LPOI/mDPO schema (JSON list or JSONL)."""
    images: str = "data/sample/images"
    """Root that every ``img_path`` is resolved inside."""


class AmberBench(_Section):
    images_dir: str = "images"
    """AMBER_1.jpg ... AMBER_1004.jpg (the official zip); query/ and annotations sit in the bench folder."""
    limit: int | None = Field(None, ge=1)


class ObjhalBench(_Section):
    questions: str = "obj_halbench_300_with_image.jsonl"
    coco_dir: str = "coco"
    """Holds instances_val2014.json and captions_val2014.json."""
    images_dir: str | None = None
    """COCO val2014 folder; null when ``questions`` embeds base64 images (the official file)."""
    limit: int | None = Field(None, ge=1)


class MmhalBench(_Section):
    template: str = "response_template.json"
    images_dir: str = "images"
    limit: int | None = Field(None, ge=1)


class BenchParams(_Section):
    """Every path of a benchmark is relative to ``<root>/<benchmark>`` (amber, objhal, mmhal), the folder
    the DVC stages declare as their dependency."""

    name: str = "mini"
    root: str = "data/sample/bench"
    amber: AmberBench = AmberBench()
    objhal: ObjhalBench = ObjhalBench()
    mmhal: MmhalBench = MmhalBench()

    def path(self, bench: str, rel: str | None) -> Path | None:
        return None if rel is None else Path(self.root) / bench / rel


class PrepareParams(_Section):
    max_reject_ratio: float = Field(0.2, ge=0, le=1)
    """Fail the stage when more than this share of records is rejected (a wrong images root, usually)."""
    min_side: int = Field(8, ge=1)
    max_pixels: int = Field(50_000_000, ge=64)


class DetectParams(_Section):
    model: str = "tiny/grounding-dino"
    box_threshold: float = Field(0.35, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)
    batch_size: int = Field(8, ge=1)
    max_candidates: int = Field(8, ge=1)
    fallback: bool = True
    """No candidate detected -> a random detected COCO object (the paper's fallback)."""


class SegmentParams(_Section):
    model: str = "tiny/sam"
    batch_size: int = Field(8, ge=1)


class VerifyParams(_Section):
    enabled: bool = True
    model: str | None = None
    """Verifier VLM; null = the run's base model."""
    max_tries: int = Field(3, ge=1)
    on_fail: Literal["keep", "drop"] = "keep"
    batch_size: int = Field(8, ge=1)


class ListsParams(_Section):
    size: int = Field(5, ge=2)
    """L images per list: image k hides the fraction k/(L-1) of the object."""
    mode: Literal["progressive", "blend"] = "progressive"
    fill: Literal["black", "mean", "blur"] = "black"
    highlight: bool = False
    mask: Literal["sam", "bbox"] = "sam"
    num_workers: int = Field(2, ge=0)


class ReferenceParams(_Section):
    max_length: int = Field(512, ge=16)
    """Tokens per sequence (prompt + image tokens + response); longer responses are truncated."""
    micro_batch_sequences: int = Field(12, ge=1)


class LoraParams(_Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(8, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    exclude_vision_tower: bool = False


class WeightsParams(_Section):
    dpo: float = Field(1.0, ge=0)
    list: float = Field(1.0, ge=0)
    anchor: float = Field(1.0, ge=0)


class TrainParams(_Section):
    method: Literal["lpoi", "mdpo", "dpo"] = "lpoi"
    beta: float = 0.1
    delta: float = 0.0
    weights: WeightsParams = WeightsParams()
    reference: Literal["precomputed", "online"] = "precomputed"
    mdpo_corruption: Literal["hidden", "crop"] = "hidden"
    lr: float = Field(5e-6, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    micro_batch_sequences: int = Field(12, ge=1)
    lora: LoraParams = LoraParams()
    save_steps: int = Field(50, ge=0)
    """Checkpoint every N optimizer steps (0: never); checkpoints are removed when training ends."""
    merge: bool = False
    seed: int = 0
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping (0: off)."""
    weight_decay: float = Field(0.0, ge=0)
    num_workers: int = Field(0, ge=0)
    """DataLoader workers for image decoding and tokenisation."""
    logging_steps: int = Field(1, ge=1)

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be > 0, got {v:g}")
        return v


class GenerateParams(_Section):
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(500, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    num_beams: int = Field(1, ge=1)
    use_adapter: bool = True
    """False = evaluate the base model (the baseline row of a comparison)."""


class AmberParams(_Section):
    discriminative: Literal["generate", "logits"] = "generate"
    similarity: Literal["auto", "exact", "spacy-lg"] = "auto"


class ObjhalParams(_Section):
    extractor: Literal["rules", "llm"] = "rules"


class JudgeParams(_Section):
    backend: Literal["hf", "openai"] = "hf"
    model: str = "tiny/llama"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (never the key itself); null for keyless local servers."""
    max_concurrency: int = Field(4, ge=1)
    timeout: float = Field(60, gt=0)
    max_retries: int = Field(6, ge=0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(1, ge=1)
    """Prompts per forward for the local (hf) judge; MMHal prompts are long, so 1 is fastest on CPU."""

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.backend == "openai" and not self.base_url:
            raise ValueError("judge.base_url is required when judge.backend is 'openai'")
        return self


class ReportParams(_Section):
    contact_sheet_rows: int = Field(12, ge=1)


class WorldModelParams(_Section):
    """The base VLM of the shapes world: a LLaVA-1.5-architecture model (CLIP ViT + MLP projector + Llama),
    built from scratch at this size (``lpoi/world/model.py``) and trained by the ``pretrain`` stage."""

    image_size: int = Field(48, ge=16)
    """px the vision tower sees (scenes are drawn at ``world.canvas`` px and resized by the processor)."""
    patch_size: int = Field(8, ge=2)
    vision_hidden: int = Field(64, ge=8)
    vision_layers: int = Field(2, ge=1)
    text_hidden: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    vocab_size: int = Field(400, ge=64)
    """Target size of the byte-level BPE trained on the world's own text."""

    @model_validator(mode="after")
    def _divisible(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"world.model.image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        for key in ("vision_hidden", "text_hidden"):
            if getattr(self, key) % self.heads:
                raise ValueError(f"world.model.{key} ({getattr(self, key)}) must be a multiple of heads ({self.heads})")
        return self


class PretrainParams(_Section):
    """Supervised training of the world's base VLM on captions and yes/no questions (all weights, no LoRA)."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    dense_weight: float = Field(1.0, ge=0)
    """Weight of the patch-label loss: the LM head at each image token predicts the class of the object
    covering that patch (0: captions and yes/no answers only)."""
    seed: int = 0
    """Weight init and example order."""


class WorldGridParams(_Section):
    methods: list[Literal["dpo", "mdpo", "lpoi"]] = ["dpo", "mdpo", "lpoi"]
    seeds: list[int] = [0, 1, 2]
    """Each (method, seed) trains from the same base with ``world.train`` (its ``method``/``seed`` replaced)."""

    @field_validator("methods", "seeds")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v


class WorldEvalParams(_Section):
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(40, ge=1)
    """A six-object caption is ~25 tokens; room for a model that keeps naming objects."""
    heldout_lists: int = Field(100, ge=1)
    """Held-out lists (from test scenes) on which the list-position rewards are measured."""


class WorldParams(_Section):
    """``world=shapes``: the synthetic miniature of the paper's experiment (``lpoi/world``); ``none`` (the
    embedded default) turns its stages into no-ops."""

    name: Literal["none", "shapes"] = "none"
    seed: int = 0
    """Scenes are a pure function of (seed, split, index)."""
    canvas: int = Field(64, ge=16)
    """Scene size in px (square)."""
    min_side: int = Field(14, ge=4)
    max_side: int = Field(24, ge=4)
    p_partner: float = Field(0.75, ge=0, le=1)
    """Probability that an anchor's partner class is in the scene too (the co-occurrence bias)."""
    min_visible: float = Field(0.6, gt=0, le=1)
    """Every object keeps at least this share of its pixels under occlusion."""
    n_pretrain: int = Field(3000, ge=1)
    n_pairs: int = Field(800, ge=1)
    n_test: int = Field(200, ge=1, le=1004)
    """Held-out scenes: AMBER generative ids 1..n_test (AMBER reserves 1..1004 for generative items)."""
    detector: Literal["oracle", "pipeline"] = "oracle"
    """How world_lists finds and segments the critical object: ``oracle`` (the generator's boxes and masks) or
    ``pipeline`` (the ``detect``/``segment`` sections' models and settings, as the embedded default runs them)."""
    threads: int = Field(1, ge=1)
    """torch intra-op threads of the world's stages. Results are bit-reproducible only for a fixed value (the
    order of float reductions follows it); more than one thread gains little on a model this small and, on a
    busy 2-core machine, makes every step many times slower."""
    model: WorldModelParams = WorldModelParams()
    pretrain: PretrainParams = PretrainParams()
    train: TrainParams = TrainParams()
    """Preference training shared by every method of the grid (``method`` and ``seed`` come from ``grid``)."""
    grid: WorldGridParams = WorldGridParams()
    eval: WorldEvalParams = WorldEvalParams()

    @model_validator(mode="after")
    def _sides(self):
        if not self.min_side <= self.max_side <= self.canvas:
            raise ValueError(f"need world.min_side <= world.max_side <= world.canvas, got {self.min_side}, "
                             f"{self.max_side}, {self.canvas}")
        return self


class Params(_Section):
    seed: int = 0
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    bench: BenchParams = BenchParams()
    prepare: PrepareParams = PrepareParams()
    detect: DetectParams = DetectParams()
    segment: SegmentParams = SegmentParams()
    verify: VerifyParams = VerifyParams()
    lists: ListsParams = ListsParams()
    reference: ReferenceParams = ReferenceParams()
    train: TrainParams = TrainParams()
    generate: GenerateParams = GenerateParams()
    amber: AmberParams = AmberParams()
    objhal: ObjhalParams = ObjhalParams()
    judge: JudgeParams = JudgeParams()
    report: ReportParams = ReportParams()
    world: WorldParams = WorldParams()

    def section(self, name: str) -> dict[str, Any]:
        """A section as a plain dict (for fingerprints and metrics)."""
        return getattr(self, name).model_dump(mode="json")


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check the spelling; see lpoi/config.py for the known ones)")
        elif e["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif msg.startswith("must "):
            lines.append(f"{key} {msg}")
        else:
            lines.append(f"{key}: {msg[0].lower() + msg[1:]}, got {e.get('input')!r}")
    return "\n".join(lines)


def validate(raw: dict) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError("invalid parameters:\n" + _format(e)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found (run from the repository root, or pass --params)")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return validate(raw)
