"""Typed parameter sections of ``params.yaml``, validated when a stage starts.

One section per stage (the example-get-started layout); profiles in ``conf/`` only change values.
An unknown key, a wrong type or an out-of-range value fails at once with a message naming the key,
e.g. ``train.beta must be > 0, got -1``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["BENCHES", "DEVICES", "METHOD_TERMS", "OFFICIAL_JUDGES", "ParamsError", "Params", "YES_NO_RULES",
           "load_params"]

BENCHES = ("amber", "objhal", "mmhal")
"""The benchmarks, in the report's order: the sections of :class:`BenchParams` and the score stages."""
YesNoRule = Literal["first-word", "lpoi", "exact", "paper"]
YES_NO_RULES: tuple[str, ...] = get_args(YesNoRule)
"""AMBER's yes/no normalisation rules (``amber.yes_no``, ``stages/score.py amber --yes-no``)."""


METHOD_TERMS: dict[str, tuple[str, ...]] = {"lpoi": ("dpo", "list", "anchor"), "mdpo": ("dpo", "list", "anchor"),
                                            "dpo": ("dpo",)}
"""The loss terms each ``train.method`` adds up (``lpoi.train.losses.preference_loss``); the others' weights are unused."""
DEVICES = "auto, cpu, cuda, cuda:<index> or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy's seed range (accelerate's set_seed seeds numpy too)

_S = TypeVar("_S", bound="_Section")


class ParamsError(ValueError):
    """params.yaml does not validate; the message lists every offending key."""


class _SectionError(ValueError):
    """A check across keys of one section. ``{s}`` in the message stands for the section's dotted path and a
    dot, so a section used in two places (``train``, ``world.train``) names its keys by their full path."""

    def __init__(self, template: str):
        super().__init__(template.replace("{s}", ""))  # as pydantic shows it for a section validated alone
        self.template = template

    def render(self, section: str) -> str:
        return self.template.replace("{s}", f"{section}." if section else "")


_READS: set[str] | None = None  # params read so far, when recording (record_reads)
_PATHS: dict[int, str] = {}  # id(section object) -> its dotted path ("" for the root)


class _Section(BaseModel):
    # allow_inf_nan: every float param of every section is finite (``beta: .inf`` would end in a
    # NonFiniteLossError that blames the data)
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)
    # (what a stage reads is recorded only under LPOI_RECORD_PARAMS: record_reads then installs
    # _recording_getattribute and _recording_model_dump here; a plain attribute read costs nothing extra)


def _recording_getattribute(self: _Section, name: str):
    """A field read is recorded by its dotted path (a sub-section is not a read: its fields are)."""
    value = super(_Section, self).__getattribute__(name)
    if _READS is not None and name in type(self).model_fields and not isinstance(value, _Section):
        path = _PATHS.get(id(self))
        if path is not None:
            _READS.add(f"{path}.{name}" if path else name)
    return value


def _recording_model_dump(self: _Section, *args, **kwargs):
    """A section serialised whole is recorded by the section's path."""
    if _READS is not None and _PATHS.get(id(self)):
        _READS.add(_PATHS[id(self)])
    return super(_Section, self).model_dump(*args, **kwargs)


class ModelParams(_Section):
    name: str = "tiny/idefics2"
    """Base VLM: ``tiny/<family>`` (idefics2, llava, qwen2.5-vl, qwen3-vl, gemma3, smolvlm) | a hub id
    (``HuggingFaceM4/idefics2-8b``, ``Qwen/Qwen2.5-VL-7B-Instruct``, ...) | a local folder."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for the inference stages (reference, verify, generate)."""
    device: str = "auto"
    """``auto`` = cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:<index>``, ``mps``. A stage that asks for
    CUDA on a machine without one stops when it starts (:func:`lpoi.stage.pick_device`)."""
    trust_remote_code: bool = False
    """Off by default: enable only for models you have audited."""
    max_pixels: int | None = Field(None, ge=1)
    """Resolution budget per image (px) for dynamic-resolution families, mapped onto the processor's own
    size keys (Qwen-VL ``max_pixels``; SmolVLM/Idefics3 and Idefics2 ``longest_edge``); it bounds the image
    tokens and so the memory per sequence. null = the processor's default. Fixed-size families (LLaVA,
    Gemma 3) accept any budget at or above their input size and refuse a smaller one."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not _DEVICE.fullmatch(v):
            raise ValueError(f"must be {DEVICES}, got {v!r}")
        return v


class DataParams(_Section):
    name: str = "sample"
    pairs: str = "data/sample/pairs.json"
    """Pairwise preferences, LPOI/mDPO schema (JSON list or JSONL)."""
    images: str = "data/sample/images"
    """Root that every ``img_path`` is resolved inside."""
    lists: str | None = None
    """The released list images (``ours_cmask_until{25,50,75,100}/<img_path>``) that ``lists.source: official``
    adopts; under ``data/external/<name>/`` (the folder the lists stage depends on). null = none."""

    @field_validator("pairs", "images")
    @classmethod
    def _under_data(cls, v: str) -> str:
        # DVC hashes both as dependencies of prepare: a folder outside the repository (/etc, ~) fails in DVC's
        # hashing with an unrelated error, and ``data`` itself would contain the stages' own outputs
        parts = PurePosixPath(v.replace("\\", "/")).parts
        if len(parts) < 2 or parts[0] != "data" or ".." in parts:
            raise ValueError(f"must be a path under data/ in the repository (DVC hashes it as a dependency; put "
                             f"outside data under data/external/, a copy or a symlink), got {v!r}")
        return v


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
    """Fail the stage when more than this share of records is rejected (a wrong images root, usually);
    it always fails when no record at all is accepted."""
    min_side: int = Field(8, ge=1)
    """px (after EXIF orientation)."""
    max_pixels: int = Field(50_000_000, ge=64)
    """Decompression-bomb limit, read from the header before decoding."""
    max_aspect_ratio: float = Field(20.0, ge=1)
    """Longer side / shorter side. The detector and SAM processors scale the long side down to their
    ``longest_edge`` (1333 / 1024 px; 120 / 64 px for the tiny ones) and stop with a zero-height size once
    the short side rounds to 0 px (ratio above ~2 x longest_edge: 128 for the tiny SAM). 20 keeps every
    processor clear of that and keeps the short side >= 66 px in Grounding DINO's 1333 px input, while
    passing panoramas and tall screenshots."""
    max_prompt_chars: int = Field(4000, ge=1)
    """Characters in the prompt (after removing ``<image>`` placeholders). verify does not truncate (a 1 MB
    prompt asked it for 107 GB); LLaVA/mDPO questions are a few hundred characters."""
    max_answer_chars: int = Field(8000, ge=1)
    """Characters in each of chosen and rejected (reference and train truncate at ``max_length`` tokens,
    verify does not)."""


class DetectParams(_Section):
    backend: Literal["groundingdino", "transformers"] = "groundingdino"
    """``groundingdino``: the original ``groundingdino-py``; ``transformers``: its port
    (``GroundingDinoForObjectDetection``). Either loads either weight format (lpoi/listgen/backends.py)."""
    model: str = "tiny/groundingdino-py"
    """``tiny/groundingdino-py`` | ``tiny/grounding-dino`` | a hub id (``IDEA-Research/grounding-dino-tiny``) |
    a folder | an official ``.pth`` (``python stages/download.py groundingdino-swint-ogc``)."""
    box_threshold: float = Field(0.35, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)
    batch_size: int = Field(8, ge=1, le=1024)  # images per forward; a bound that catches a typo (8000 for 8)
    max_candidates: int = Field(8, ge=1, le=256)  # noun phrases per prompt: a caption names far fewer
    fallback: bool = True
    """No candidate detected -> a random detected COCO object (the paper's fallback)."""


class SegmentParams(_Section):
    backend: Literal["segment-anything", "transformers"] = "segment-anything"
    """``segment-anything``: Meta's original package; ``transformers``: its port (``SamModel``)."""
    model: str = "tiny/segment-anything"
    """``tiny/segment-anything`` | ``tiny/sam`` | a hub id (``facebook/sam-vit-base``) | a folder | an official
    ``.pth`` (``python stages/download.py sam-vit-b``)."""
    batch_size: int = Field(8, ge=1, le=1024)  # images per forward (a typo guard, as detect.batch_size)


class VerifyParams(_Section):
    enabled: bool = True
    model: str | None = None
    """Verifier VLM; null = the run's base model."""
    max_tries: int = Field(3, ge=1, le=100)  # candidate objects tried per sample; each try is a VLM forward
    on_fail: Literal["keep", "drop"] = "keep"
    batch_size: int = Field(8, ge=1, le=1024)  # a typo guard, as detect.batch_size


class ListsParams(_Section):
    size: int = Field(5, ge=2, le=16)  # the paper uses 5; every image is one more sequence per sample in train
    """L images per list: image k hides the fraction k/(L-1) of the object."""
    mode: Literal["progressive", "blend"] = "progressive"
    fill: Literal["black", "mean", "blur"] = "black"
    highlight: bool = False
    mask: Literal["sam", "bbox"] = "sam"
    num_workers: int = Field(2, ge=0, le=256)  # processes; more than the cores only costs memory
    source: Literal["generate", "official"] = "generate"
    """``generate``: detect, segment, verify and interpolate (this pipeline); ``official``: adopt the LPOI
    authors' released lists (``data.lists``) and skip detect/segment/verify (``lpoi/listgen/official.py``)."""


class ReferenceParams(_Section):
    """How the training sequences are built -- read by the reference *and* train stages, so the precomputed
    log-probs and the policy's always score identical token ids (``lpoi.train.collate.Tokenization``)."""

    max_length: int = Field(512, ge=16, le=131_072)  # beyond every supported model's context window
    """Tokens per sequence (prompt + image tokens + response); longer responses are truncated."""
    micro_batch_sequences: int = Field(12, ge=1, le=4096)  # sequences per forward (a typo guard)
    tokenization: Literal["answer", "official"] = "answer"
    """``answer``: the answer text + end of turn after the generation prompt, the response's tail cut at
    ``max_length``. ``official``: what the official LPOI trainer scores (lpoi_dpo_trainer_5img.py, TRL 0.11's
    DPOTrainer) -- the whole assistant turn as the chat template renders it + EOS ("Assistant: A<end_of_utterance>
    \n</s>" for Idefics2), BOS ensured, ``keep_end`` truncation at ``max_length``/``max_prompt_length``
    (official defaults 512/128)."""
    max_prompt_length: int = Field(128, ge=1, le=131_072)
    """``official`` only: the prompt's last tokens kept when prompt + the pair's longer answer exceed
    ``max_length`` (TRL's default 128, trainer ~L736-742)."""

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.tokenization == "official" and self.max_prompt_length >= self.max_length:
            raise _SectionError(f"{{s}}max_prompt_length ({self.max_prompt_length}) must be below "
                                f"{{s}}max_length ({self.max_length})")
        return self


class LoraParams(_Section):
    """The paper's LoRA: rank 8, alpha 8, every linear layer (the LM head excepted), image side included."""

    r: int = Field(8, ge=1, le=4096)  # the rank cannot usefully exceed a layer's width
    alpha: float = Field(8, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    """``all-linear``, a list of module names, or a regex (peft's ``target_modules``)."""
    exclude_vision_tower: bool = False
    """Keep the image encoder and projector frozen (``lpoi.train.lora.VISION_MODULES``)."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        # a misspelt LoRA key (``rank``) names the allowed ones, not just "unknown key"
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown train.lora key(s) {unknown}; allowed: {sorted(cls.model_fields)}")
        return raw


class WeightsParams(_Section):
    dpo: float = Field(1.0, ge=0)
    list: float = Field(1.0, ge=0)
    anchor: float = Field(1.0, ge=0)


class TrainParams(_Section):
    """The training recipe (``lpoi.train.recipe``); the only place its settings are validated."""

    method: Literal["lpoi", "mdpo", "dpo"] = "lpoi"
    """``lpoi``: DPO + Plackett-Luce list + anchor; ``mdpo``: DPO + image pair + anchor; ``dpo``: text pair only."""
    beta: float = 0.1
    """Temperature of every term (> 0)."""
    delta: float = 0.0
    """Anchor margin."""
    weights: WeightsParams = WeightsParams()
    reference: Literal["precomputed", "online"] = "precomputed"
    """``precomputed``: the reference stage's file; ``online``: adapter disabled, every step (the official way)."""
    mdpo_corruption: Literal["hidden", "crop"] = "hidden"
    """mdpo's corrupted image: the fully hidden list image, or mDPO's 1-20 % random crop (reference online)."""
    lr: float = Field(5e-6, gt=0, le=1)  # catches 5e6 for 5e-6
    epochs: int = Field(1, ge=1, le=10_000)
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides ``epochs`` when set."""
    batch_size: int = Field(1, ge=1, le=1024)  # each sample brings K + 1 sequences; a typo guard
    """Samples per process per micro-step; the global batch is ``batch_size * processes * grad_accum``."""
    grad_accum: int = Field(1, ge=1, le=65_536)  # the paper's setups use up to 64
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """After the linear warmup."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Base weights in that dtype + autocast; LoRA weights stay float32."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (non-reentrant)."""
    micro_batch_sequences: int = Field(12, ge=1, le=4096)  # a typo guard, as reference.micro_batch_sequences
    """Most sequences per forward (a micro-batch brings ``batch_size * (K + 1)``)."""
    lora: LoraParams = LoraParams()
    save_steps: int = Field(50, ge=0)
    """Checkpoint every N optimizer steps (0: never); checkpoints are removed when training ends."""
    merge: bool = False
    """Also write ``merged/``: base + adapter merged in float32 (whatever ``precision``)."""
    seed: Seed = 0
    """LoRA init, data order, dropout, mDPO crops."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping (0: off)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's."""
    num_workers: int = Field(0, ge=0, le=256)  # processes; more than the cores only costs memory
    """DataLoader workers for image decoding and tokenisation."""
    logging_steps: int = Field(1, ge=1)
    """Log a curve point every N optimizer steps (and at the last)."""
    disable_dropout: bool = False
    """Set every ``torch.nn.Dropout`` of the base model to p = 0 before training, as TRL's DPO trainer does
    (``disable_dropout=True`` in the official LPOI config): the policy and the adapter-disabled reference
    then see the same network. Off by default (LoRA dropout is ``lora.dropout`` either way)."""

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be > 0, got {v:g}")
        return v

    @model_validator(mode="after")
    def _trains_something(self):
        _check_objective(self.method, self.weights, "{s}")
        return self


def _check_objective(method: str, weights: WeightsParams, prefix: str, why: str = "") -> None:
    """Refuse an objective whose every active term weighs 0: it has no gradient, and train would save the
    identity adapter as if it had learnt something."""
    terms = METHOD_TERMS[method]
    if all(getattr(weights, t) == 0 for t in terms):
        keys = [f"{prefix}weights.{t}" for t in terms]
        named = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
        raise _SectionError(f"{named} {'is' if len(keys) == 1 else 'are all'} 0: method {method!r}{why} would "
                            f"train nothing (an identity adapter); give {'it' if len(keys) == 1 else 'one of them'} a "
                            "positive weight")


class ComputeParams(_Section):
    """How many processes the stages use. Results do not depend on it beyond float rounding (training's
    reduction order); the stages that read it declare it, so ``dvc.lock`` records how a run was made."""

    train_processes: int = Field(1, ge=1, le=1024)  # one per GPU of the machine; a typo guard
    """Training processes on this machine. Above 1 the ``train`` stage re-launches itself through
    ``accelerate launch --config_file conf/accelerate/<accelerate>.yaml --num_processes N`` (on a CPU-only
    machine: gloo processes). The global batch is ``train.batch_size * train_processes * train.grad_accum``."""
    accelerate: Literal["ddp", "fsdp"] = "ddp"
    """The accelerate config (``conf/accelerate/``) used when ``train_processes`` > 1: ``ddp`` (every process
    holds the base model) or ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded)."""
    engine: Literal["local", "ray"] = "local"
    """Who computes the per-sample stages' blocks (detect, segment, verify, lists, reference, generate):
    ``local`` (this process) or ``ray`` (a pool of Ray actors; ``pip install -e ".[ray]"``). The stage's own
    process keeps the bookkeeping (pending rows, journal, rejects, counts) and writes rows in input order, so
    the outputs are byte-identical and a killed run resumes the same way."""
    address: str | None = None
    """``engine: ray`` only: null starts a Ray on this machine for the stage; an address (``ray://host:10001``,
    ``host:6379`` or ``auto``) joins that cluster, whose nodes must see the repository and ``data/`` at the
    same paths (a shared filesystem)."""
    workers: int = Field(2, ge=1, le=4096)  # actors; a typo guard
    """``engine: ray`` only: actors computing blocks at once (one per GPU on a GPU node)."""
    gpus_per_worker: float | None = Field(None, ge=0, le=64)
    """``engine: ray`` only: GPUs each actor reserves; null = 1 when the cluster has GPUs, else 0."""


class GenerateParams(_Section):
    batch_size: int = Field(8, ge=1, le=1024)  # a typo guard, as detect.batch_size
    max_new_tokens: int = Field(500, ge=1, le=16_384)  # the benchmarks' answers are a few hundred tokens
    do_sample: bool = False
    temperature: float | None = Field(None, gt=0, le=100)  # above ~2 sampling is noise already
    top_p: float | None = Field(None, gt=0, le=1)
    num_beams: int = Field(1, ge=1, le=64)  # the cache grows with it: a typo guard
    use_adapter: bool = True
    """False = evaluate the base model (the baseline row of a comparison)."""
    adapter: str | None = None
    """A peft adapter folder to evaluate instead of the train stage's (e.g. the LPOI authors' checkpoint,
    ``models/external/lpoi-official-llava-1.5-7b/adapter``); it may hold the adapter one folder down.
    null = the trained adapter. Ignored when ``use_adapter`` is false."""


class AmberParams(_Section):
    discriminative: Literal["generate", "logits"] = "generate"
    similarity: Literal["auto", "exact", "spacy-lg"] = "auto"
    """Noun similarity of the generative scorer: ``spacy-lg`` (AMBER's inference.py: spaCy en_core_web_lg,
    the score stage stops when it is missing), ``auto`` (spacy-lg when installed, else exact -- the
    metrics' ``similarity`` and REPORT.md's warnings say which ran), ``exact``."""
    yes_no: YesNoRule = "first-word"
    """How generate turns a generated yes/no reply into the stored answer (the raw reply is kept too):
    ``first-word`` = the first whole word yes/no; ``lpoi`` = the LPOI script's substring rule on the reply;
    ``paper`` = that rule on what the official script decoded -- the whole sequence, prompt included (kept
    as ``decoded_full``), from id 1004 on (generate-idefics-lpoi-amber.py); ``exact`` = unchanged. Not used
    with ``discriminative: logits`` (already Yes/No); ``paper`` requires ``discriminative: generate``."""

    @model_validator(mode="after")
    def _paper_generates(self):
        if self.yes_no == "paper" and self.discriminative != "generate":
            raise ValueError("amber.yes_no 'paper' reads generated text: set amber.discriminative to 'generate' "
                             f"(got {self.discriminative!r})")
        return self


class ScoreParams(_Section):
    max_error_ratio: float = Field(0.05, ge=0, le=1)
    """Fail a score stage when more than this share of a benchmark's answers would be left out of its
    metrics (generation errors, judge/extraction errors): the rest would give a misleading score."""


OFFICIAL_JUDGES = {"mmhal": "gpt-4-0314", "objhal": "gpt-3.5-turbo-0613"}
"""The models the authors' scorers called (OFFICIAL_SETUP.md): LLaVA-RLHF's eval_gpt_mmhal.py judge and RLHF-V's
eval_gpt_obj_halbench.py --use_gpt object extractor; the openai backend's names when ``judge.model`` is null."""


class ObjhalParams(_Section):
    extractor: Literal["rules", "llm"] = "rules"
    """``rules``: offline CHAIR parsing; ``llm``: RLHF-V's object extraction through the ``judge`` section's
    client (``eval_gpt_obj_halbench.py --use_gpt``)."""
    model: str | None = None
    """The ``llm`` extractor's model; null = ``judge.model``, or when that is null too ``gpt-3.5-turbo-0613``
    (RLHF-V's; retired by its vendor: any OpenAI-compatible stand-in, named in the report)."""


class JudgeParams(_Section):
    backend: Literal["hf", "openai"] = "hf"
    model: str | None = "tiny/llama"
    """The judge (and the Object HalBench extractor unless ``objhal.model``): a local causal LM for ``hf``; the
    served model name for ``openai``, where null = the authors' judges -- ``gpt-4-0314`` for MMHal-Bench,
    ``gpt-3.5-turbo-0613`` for the object extraction (:data:`OFFICIAL_JUDGES`)."""
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (never the key itself); null for keyless local servers."""
    max_concurrency: int = Field(4, ge=1, le=1024)  # open requests to one server; a typo guard
    timeout: float = Field(60, gt=0, le=86_400)  # s; a day at most (a typo guard)
    """Seconds per socket operation (connect, each read) of the openai backend."""
    deadline: float = Field(180, gt=0, le=86_400)  # s
    """Most seconds one request may take in all, however slowly the server sends (each retry gets its own)."""
    max_retries: int = Field(6, ge=0, le=100)  # retries back off exponentially: 100 is already days
    max_new_tokens: int = Field(64, ge=1, le=16_384)  # a judgement is a few sentences
    batch_size: int = Field(1, ge=1, le=1024)  # a typo guard, as detect.batch_size
    """Prompts per forward for the local (hf) judge; MMHal prompts are long, so 1 is fastest on CPU."""

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.backend == "openai" and not self.base_url:
            raise _SectionError("{s}base_url is required when {s}backend is 'openai'")
        if self.backend == "hf" and self.model is None:
            raise _SectionError("{s}model is required when {s}backend is 'hf' (null names the authors' hosted "
                                "judges, for the openai backend)")
        return self

    def model_for(self, bench: str, override: str | None = None) -> str:
        """The model that judges ``bench`` (``mmhal`` or ``objhal``): ``override`` (``objhal.model``), else
        ``model``, else the authors' (:data:`OFFICIAL_JUDGES`)."""
        return override or self.model or OFFICIAL_JUDGES[bench]


class ReportParams(_Section):
    contact_sheet_rows: int = Field(12, ge=1, le=1000)  # one row per sample in one PNG


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
            raise _SectionError(f"{{s}}image_size ({self.image_size}) must be a multiple of {{s}}patch_size "
                                f"({self.patch_size})")
        for key in ("vision_hidden", "text_hidden"):
            if getattr(self, key) % self.heads:
                raise _SectionError(f"{{s}}{key} ({getattr(self, key)}) must be a multiple of {{s}}heads "
                                    f"({self.heads})")
        return self


class PretrainParams(_Section):
    """Supervised training of the world's base VLM on captions and yes/no questions (all weights, no LoRA)."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1, le=4096)  # a typo guard
    lr: float = Field(2e-3, gt=0, le=1)  # catches 2e3 for 2e-3
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    dense_weight: float = Field(1.0, ge=0)
    """Weight of the patch-label loss: the LM head at each image token predicts the class of the object
    covering that patch (0: captions and yes/no answers only)."""
    seed: Seed = 0
    """Weight init and example order."""


class WorldListsParams(_Section):
    """How the world hides the critical object in the training and held-out lists (``lpoi/world/hide.py``)."""

    k: int = Field(5, ge=2, le=16)
    """Images per list, visibility 1 -> 0 in equal steps (the paper: 5)."""
    fill: Literal["removal", "black", "scramble"] = "removal"
    """``removal``: the scene re-drawn without the object's pixels (what was behind shows, no silhouette);
    ``black``: the object's pixels painted black (the paper's fill on real photos: the silhouette stays);
    ``scramble``: the object's pixels scattered inside its box (its colour stays, its shape goes)."""
    yes_no: bool = True
    """Add yes/no preference pairs to the description pairs: "Is there a {hidden object}" (Yes over No, the
    list hides it) and, where the scene has one, "Is there a {absent partner}" (No over Yes, the list draws
    the partner in)."""


class WorldMethodParams(_Section):
    """One method or ablation of the study: an objective of the project's trainer."""

    method: Literal["lpoi", "mdpo", "dpo"]
    weights: WeightsParams = WeightsParams()
    mdpo_corruption: Literal["hidden", "crop"] = "hidden"
    k: int | None = Field(None, ge=2, le=16)
    """List images used (evenly spaced from visibility 1 to 0, ends included); None: all ``world.lists.k``."""

    @model_validator(mode="after")
    def _trains_something(self):
        _check_objective(self.method, self.weights, "{s}")
        return self


def _default_methods() -> dict[str, WorldMethodParams]:
    w = WeightsParams
    return {
        "dpo": WorldMethodParams(method="dpo", weights=w(dpo=1, list=0, anchor=0)),
        "dpo_anchor": WorldMethodParams(method="mdpo", weights=w(dpo=1, list=0, anchor=1)),
        "mdpo": WorldMethodParams(method="mdpo"),
        "mdpo_crop": WorldMethodParams(method="mdpo", mdpo_corruption="crop"),
        "lpoi": WorldMethodParams(method="lpoi"),
        "lpoi_k3": WorldMethodParams(method="lpoi", k=3),
        "lpoi_no_anchor": WorldMethodParams(method="lpoi", weights=w(dpo=1, list=1, anchor=0)),
        "list_only": WorldMethodParams(method="lpoi", weights=w(dpo=0, list=1, anchor=0)),
    }


class WorldTuneParams(_Section):
    """The tuning grid every method gets (the same grid, the same budget), trained on the ``pairs`` split and
    scored on the ``val`` split, from base ``base`` with training seed ``seed`` (no test seed)."""

    lr: list[Annotated[float, Field(gt=0, le=1)]] = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    epochs: list[Annotated[int, Field(ge=1, le=100)]] = [1]
    beta: list[Annotated[float, Field(gt=0, le=100)]] = [0.1, 0.5]
    seed: Seed = 1000
    base: int = Field(0, ge=0)

    @field_validator("lr", "epochs", "beta")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v


class WorldSelectParams(_Section):
    """The selection rule, fixed before any test number is seen: on the validation split, the configuration
    with the lowest ``minimize`` among those whose ``keep`` is at least the base model's minus ``max_drop``
    points; when none is, the one with the highest ``keep``. Ties go to the earlier configuration of the grid."""

    minimize: Literal["Cog", "CHAIR", "Hal"] = "Cog"
    keep: Literal["Cover"] = "Cover"
    max_drop: float = Field(5.0, ge=0, le=100)


class WorldStudyParams(_Section):
    """The study ``world_grid`` runs: every method tuned alike on validation, then its selected configuration
    trained from every base with every seed and scored on the test split, with paired bootstrap intervals."""

    methods: dict[str, WorldMethodParams] = Field(default_factory=_default_methods)
    bases: int = Field(3, ge=1, le=64)
    """Pretrained bases: ``world.pretrain`` with seeds ``pretrain.seed + 0 .. bases - 1``."""
    seeds: list[Seed] = [0, 1, 2, 3]
    """Training seeds per base on the test split (cells = bases x seeds per method)."""
    rejection: Literal["substitute", "insert"] = "substitute"
    """The description pairs' rejected answer for tuning and the main table: ``substitute`` (an absent partner
    in place of a present object: as long as the chosen answer) or ``insert`` (the chosen answer plus one)."""
    also: list[str] = ["dpo", "lpoi"]
    """Methods also trained and tested with the other rejection (at their selected configuration): both are reported."""
    also_seeds: list[Seed] = [0, 1]
    """Training seeds per base of those cells (a subset of ``seeds``: fewer cells, the same pairing)."""
    reference_method: str = "lpoi"
    """Every difference is reported against this method, with a paired interval."""
    select: WorldSelectParams = WorldSelectParams()
    tune: WorldTuneParams = WorldTuneParams()
    bootstrap: int = Field(1000, ge=100, le=100_000)
    """Paired bootstrap resamples (over test scenes and over (base, seed) cells)."""
    workers: int = Field(2, ge=1, le=256)
    """Cells trained at once, each in its own process with ``world.threads`` threads: the results do not depend
    on it (every cell is a pure function of its inputs)."""

    @field_validator("seeds", "also_seeds")
    @classmethod
    def _seeds_unique(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v

    @model_validator(mode="after")
    def _known(self):
        if not self.methods:
            raise _SectionError("{s}methods is empty: the study needs at least one method")
        for key in ("also",):
            unknown = [m for m in getattr(self, key) if m not in self.methods]
            if unknown:
                raise _SectionError(f"{{s}}{key} names {unknown}, not in {{s}}methods ({', '.join(self.methods)})")
        if self.reference_method not in self.methods:
            raise _SectionError(f"{{s}}reference_method {self.reference_method!r} is not in {{s}}methods")
        if self.tune.base >= self.bases:
            raise _SectionError(f"{{s}}tune.base ({self.tune.base}) must be below {{s}}bases ({self.bases})")
        if not set(self.also_seeds) <= set(self.seeds):
            raise _SectionError(f"{{s}}also_seeds {self.also_seeds} must be among {{s}}seeds {self.seeds}")
        if self.tune.seed in self.seeds:
            raise _SectionError(f"{{s}}tune.seed ({self.tune.seed}) is one of {{s}}seeds: tuning must not use a test seed")
        return self


class WorldEvalParams(_Section):
    batch_size: int = Field(32, ge=1, le=4096)  # a typo guard
    max_new_tokens: int = Field(40, ge=1, le=16_384)  # a typo guard
    """A six-object caption is ~25 tokens; room for a model that keeps naming objects."""
    heldout_lists: int = Field(100, ge=1)
    """Held-out lists (from test scenes) on which the list-position rewards are measured."""


class WorldParams(_Section):
    """``world=shapes``: the synthetic miniature of the paper's experiment (``lpoi/world``); ``none`` (the
    embedded default) turns its stages into no-ops."""

    name: Literal["none", "shapes"] = "none"
    seed: Seed = 0
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
    n_pairs: int = Field(120, ge=1)
    """Scenes that give the preference pairs (a description pair each, and yes/no pairs: ``lists.yes_no``)."""
    n_val: int = Field(200, ge=1, le=1004)
    """Validation scenes (their own AMBER-format benchmark): the only numbers tuning and selection see."""
    n_test: int = Field(1000, ge=1, le=1004)
    """Held-out test scenes: AMBER generative ids 1..n_test (AMBER reserves 1..1004 for generative items)."""
    lists: WorldListsParams = WorldListsParams()
    threads: int = Field(1, ge=1, le=1024)  # a typo guard
    """torch intra-op threads of the world's stages. Results are bit-reproducible only for a fixed value (the
    order of float reductions follows it); more than one thread gains little on a model this small and, on a
    busy 2-core machine, makes every step many times slower."""
    model: WorldModelParams = WorldModelParams()
    pretrain: PretrainParams = PretrainParams()
    train: TrainParams = TrainParams()
    """Preference training shared by every cell of the study; each cell replaces the objective (``method``,
    ``weights``, ``mdpo_corruption``), ``lr``, ``epochs``, ``beta`` and ``seed``."""
    study: WorldStudyParams = WorldStudyParams()
    eval: WorldEvalParams = WorldEvalParams()

    @model_validator(mode="after")
    def _sides(self):
        if not self.min_side <= self.max_side <= self.canvas:
            raise _SectionError(f"need {{s}}min_side <= {{s}}max_side <= {{s}}canvas, got {self.min_side}, "
                                f"{self.max_side}, {self.canvas}")
        return self

    @model_validator(mode="after")
    def _list_lengths(self):
        for name, m in self.study.methods.items():
            if m.k is not None and m.k > self.lists.k:
                raise _SectionError(f"{{s}}study.methods.{name}.k ({m.k}) exceeds {{s}}lists.k ({self.lists.k})")
        return self


class Params(_Section):
    seed: Seed = 0
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
    score: ScoreParams = ScoreParams()
    report: ReportParams = ReportParams()
    world: WorldParams = WorldParams()
    compute: ComputeParams = ComputeParams()

    @model_validator(mode="after")
    def _official_lists(self):
        if self.lists.source == "official":
            if not self.data.lists:
                raise ValueError("lists.source is 'official' but data.lists names no folder (use -S data=lpoi-official)")
            inside = Path(self.data.lists).as_posix().startswith(f"data/external/{self.data.name}/")
            if not inside:
                raise ValueError(f"data.lists must lie under data/external/{self.data.name}/ (the folder the lists "
                                 f"stage depends on), got {self.data.lists!r}")
        return self

    def section(self, name: str) -> dict[str, Any]:
        """A section as a plain dict (for fingerprints and metrics)."""
        return getattr(self, name).model_dump(mode="json")


def _did_you_mean(loc: tuple) -> str:
    """`` (did you mean train.beta?)`` for a misspelt key, from the known keys of its section."""
    import difflib

    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {'.'.join(map(str, (*loc[:-1], close[0])))}?)" if close else ""


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if isinstance(e.get("ctx", {}).get("error"), _SectionError):  # names its keys itself
            lines.append(e["ctx"]["error"].render(key))
        elif not e["loc"]:  # a check across sections (Params' own validators): the message names the keys
            lines.append(msg)
        elif e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_did_you_mean(e['loc'])} (check the spelling; see lpoi/config.py for "
                         "the known ones)")
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


def section_of(cls: type[_S], params: _S | None, settings: dict, **renames: str) -> _S:
    """The validated section a library function runs with.

    Stages pass their section whole (``run_detect(..., params=p.detect)``); callers without a params.yaml
    (tests, benchmarks, the miniature) may instead give single settings as keywords, named as the fields
    or by ``renames`` (keyword -> field), validated exactly as params.yaml is. Both at once is an error:
    one call must not mix a section with settings that silently override it.
    """
    if params is not None:
        if settings:
            raise TypeError(f"pass the {cls.__name__} section or single settings ({', '.join(sorted(settings))}), "
                            "not both")
        if not isinstance(params, cls):
            raise TypeError(f"expected a {cls.__name__}, got {type(params).__name__}")
        return params
    fields = {renames.get(k, k): v for k, v in settings.items()}
    unknown = sorted(k for k in fields if k not in cls.model_fields)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)} (settings of {cls.__name__}: "
                        f"{', '.join(sorted(set(cls.model_fields) | set(renames)))})")
    try:
        return cls(**fields)
    except ValidationError as e:
        raise ParamsError(f"invalid {cls.__name__} settings:\n" + _format(e)) from None


# ---------------------------------------------------------------------------------------------- recording reads

def record_reads(params: Params, out: str | Path) -> None:
    """Record every param read through ``params`` from now on; at exit append one JSON line to ``out``:
    ``{"stage": $DVC_STAGE or the script, "params": [dotted keys], "modules": [lpoi source files]}``.
    The test that every param a stage reads is declared in its dvc.yaml entry (and vice versa) reads it.

    Recording is switched on here, for every section from now on (:func:`load_params` calls this before
    it returns the params, so before the stage reads any); a process that never records pays nothing."""
    import atexit

    global _READS
    _READS = set() if _READS is None else _READS
    if _Section.__dict__.get("__getattribute__") is not _recording_getattribute:
        _Section.__getattribute__ = _recording_getattribute
        _Section.model_dump = _recording_model_dump

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
