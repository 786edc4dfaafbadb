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


_READS: set[str] | None = None  # params read so far, when recording (record_reads)
_PATHS: dict[int, str] = {}  # id(section object) -> its dotted path ("" for the root)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    # Recording what a stage reads (LPOI_RECORD_PARAMS, see `record_reads`): a field read is recorded by
    # its dotted path, a section serialised whole (model_dump) by the section's path.
    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if _READS is not None and name in type(self).model_fields and not isinstance(value, _Section):
            path = _PATHS.get(id(self))
            if path is not None:
                _READS.add(f"{path}.{name}" if path else name)
        return value

    def model_dump(self, *args, **kwargs):
        if _READS is not None and _PATHS.get(id(self)):
            _READS.add(_PATHS[id(self)])
        return super().model_dump(*args, **kwargs)


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
    """Read and validate a params file. With ``LPOI_RECORD_PARAMS=<file>`` set, the params this process
    reads and the ``lpoi`` modules it imports are appended to that file at exit (:func:`record_reads`)."""
    import os

    import yaml

    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found (run from the repository root, or pass --params)")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    params = validate(raw)
    if os.environ.get("LPOI_RECORD_PARAMS"):
        record_reads(params, os.environ["LPOI_RECORD_PARAMS"])
    return params


# ---------------------------------------------------------------------------------------------- recording reads

def record_reads(params: Params, out: str | Path) -> None:
    """Record every param read through ``params`` from now on; at exit append one JSON line to ``out``:
    ``{"stage": $DVC_STAGE or the script, "params": [dotted keys], "modules": [lpoi source files]}``.
    The test that every param a stage reads is declared in its dvc.yaml entry (and vice versa) reads it."""
    import atexit

    global _READS
    _READS = set() if _READS is None else _READS

    def register(section: _Section, path: str) -> None:
        _PATHS[id(section)] = path
        for name in type(section).model_fields:
            v = object.__getattribute__(section, name)
            if isinstance(v, _Section):
                register(v, f"{path}.{name}" if path else name)

    register(params, "")
    atexit.register(_write_reads, Path(out))


def _write_reads(out: Path) -> None:
    import json
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    mods = sorted({Path(m.__file__).resolve().relative_to(root).as_posix() for name, m in list(sys.modules.items())
                   if (name == "lpoi" or name.startswith("lpoi.")) and getattr(m, "__file__", None)})
    stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    line = json.dumps({"stage": stage, "params": sorted(_READS or ()), "modules": mods}) + "\n"
    with open(out, "a", encoding="utf-8") as f:  # one short append per process
        f.write(line)
