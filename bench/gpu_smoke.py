"""GPU smoke test: LoRA training steps of real-size, randomly initialised Idefics2-8B, LLaVA-1.5-7B and
Qwen2.5-VL-7B.

No network and no checkpoints are needed: the architectures are built from their hub configs (written
out below: Mistral-7B + SigLIP-so400m at 980 px + perceiver resampler for Idefics2-8B; Vicuna/Llama-2-7B
+ CLIP ViT-L/14-336 for LLaVA-1.5-7B; Qwen2.5-7B + its 32-layer window-attention ViT for Qwen2.5-VL-7B),
initialised directly on the GPU in bf16, with LoRA (r 8, all linear layers) and gradient checkpointing.
Inputs are built as tensors (the processors need hub files): a real-size synthetic batch -- per sample a
~40-token prompt around the image tokens (64 per image for Idefics2, 576 for LLaVA, 512 for Qwen2.5-VL:
a 448 x 896 px image, the ``qwen2.5-vl-7b`` profile's ``max_pixels``, as one flat tensor of 2048 patches
with its ``image_grid_thw`` row, split per sequence by the batch's offsets), a K = 5 image list and
~200-token chosen / rejected answers.

For each model it times the two formulations of ``bench/train_step.py`` (official: 14 sequence-forwards
per sample, 7 with gradients; ours: 6 in one batched forward, reference precomputed) alternately,
forward + backward, and reports step time, peak GPU memory (the paper's budget: one 48 GB GPU) and the
speedup. ``--tiny`` runs the same logic with small configs on the CPU (used to test this script).

    python bench/gpu_smoke.py [--tiny] [--steps 3] [--batch 1] [--models idefics2,llava,qwen2.5-vl]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_step import alternate, official_step, ours_step, perturb_lora  # noqa: E402

from lpoi.train.collate import SequenceBatch  # noqa: E402
from lpoi.train.logprobs import sequence_logps  # noqa: E402

# HuggingFaceM4/idefics2-8b config.json (text = Mistral-7B-v0.1, vision = SigLIP so400m at 980 px).
IDEFICS2_8B = dict(
    text_config=dict(
        model_type="mistral",
        vocab_size=32003,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=None,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=980,
        patch_size=14,
        num_channels=3,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    ),
    perceiver_config=dict(
        hidden_act="silu",
        resampler_n_latents=64,
        resampler_depth=3,
        resampler_n_heads=16,
        resampler_head_dim=96,
        num_key_value_heads=4,
    ),
    image_token_id=32001,
    tie_word_embeddings=False,
)
IDEFICS2_TINY = dict(
    text_config=dict(
        model_type="mistral",
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        sliding_window=None,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
    ),
    perceiver_config=dict(
        hidden_size=64,
        resampler_n_latents=8,
        resampler_depth=1,
        resampler_n_heads=2,
        resampler_head_dim=16,
        num_key_value_heads=1,
    ),
    image_token_id=998,
    tie_word_embeddings=False,
)
# llava-hf/llava-1.5-7b-hf config.json (text = Vicuna-7B / Llama-2-7B, vision = CLIP ViT-L/14 at 336 px).
LLAVA_15_7B = dict(
    text_config=dict(
        model_type="llama",
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    vision_config=dict(
        model_type="clip_vision_model",
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    image_token_id=32000,
    projector_hidden_act="gelu",
    vision_feature_layer=-2,
    vision_feature_select_strategy="default",
    image_seq_length=576,
)
LLAVA_TINY = dict(
    text_config=dict(
        model_type="llama",
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    vision_config=dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        projection_dim=32,
    ),
    image_token_id=998,
    projector_hidden_act="gelu",
    vision_feature_layer=-2,
    vision_feature_select_strategy="default",
    image_seq_length=16,
)
# Qwen/Qwen2.5-VL-7B-Instruct config.json (text = Qwen2.5-7B with multimodal RoPE, vision = 32-layer ViT,
# patch 14, 2 x 2 merge, window attention with full attention every 8th block).
QWEN25_VL_7B = dict(
    text_config=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    vision_config=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
        hidden_act="silu",
    ),
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    tie_word_embeddings=False,
)
QWEN25_VL_TINY = dict(
    text_config=dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=1,
        eos_token_id=2,
    ),
    vision_config=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    ),
    image_token_id=995,
    video_token_id=996,
    vision_start_token_id=993,
    vision_end_token_id=994,
    tie_word_embeddings=False,
)
QWEN_GRID = {False: (1, 32, 64), True: (1, 4, 8)}
"""(t, h, w) patches per image: 448 x 896 px -> 2048 patches -> 512 image tokens (real); 8 tokens (tiny)."""


def build(family: str, tiny: bool, device: str, dtype):
    """(model, n_image_tokens, image side or Qwen's patch grid) for a random-init model built on ``device``."""
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        LlavaConfig,
        LlavaForConditionalGeneration,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    if family == "qwen2.5-vl":
        cfg = Qwen2_5_VLConfig(**(QWEN25_VL_TINY if tiny else QWEN25_VL_7B))
        grid = QWEN_GRID[tiny]
        cls, n_img, side = Qwen2_5_VLForConditionalGeneration, grid[0] * grid[1] * grid[2] // 4, grid
    elif family == "idefics2":
        cfg = Idefics2Config(**(IDEFICS2_TINY if tiny else IDEFICS2_8B))
        cls, n_img, side = (
            Idefics2ForConditionalGeneration,
            cfg.perceiver_config.resampler_n_latents,
            cfg.vision_config.image_size,
        )
    else:
        cfg = LlavaConfig(**(LLAVA_TINY if tiny else LLAVA_15_7B))
        cls, n_img, side = LlavaForConditionalGeneration, cfg.image_seq_length, cfg.vision_config.image_size
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model, n_img, side


def make_batches(family: str, model, n_img: int, side: int, *, b: int, k: int, resp_len: int, device, dtype):
    """(ours, official pair, official list) SequenceBatches with real-size shapes and random content."""
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    vocab = cfg.text_config.vocab_size
    img_tok = cfg.image_token_id

    def words(n):
        return torch.randint(100, min(vocab, 32000) - 10, (n,), generator=g).tolist()

    def prompt():
        if family == "idefics2":  # <s> User: <fake><image>*64<fake> question <end_of_utterance>\nAssistant:
            fake = img_tok - 1
            return [1] + words(3) + [fake] + [img_tok] * n_img + [fake] + words(24) + words(6)
        if family == "qwen2.5-vl":  # ...user\n<|vision_start|><|image_pad|>*512<|vision_end|>question...assistant\n
            return words(4) + [cfg.vision_start_token_id] + [img_tok] * n_img + [cfg.vision_end_token_id] + words(30)
        return (
            [1] + words(3) + [img_tok] * n_img + words(24) + words(6)
        )  # <s> USER: <image>*576 question ASSISTANT:

    def image():
        if family == "qwen2.5-vl":  # flat patches (t*h*w, 3 * temporal_patch * patch * patch)
            vc = cfg.vision_config
            return torch.randn(side[0] * side[1] * side[2], 3 * vc.temporal_patch_size * vc.patch_size**2, generator=g)
        return torch.randn((1, 3, side, side) if family == "idefics2" else (3, side, side), generator=g)

    rows, pixels, resp = [], [], []
    per_sample = []
    for _ in range(b):
        p = prompt()
        chosen = words(resp_len + int(torch.randint(-10, 11, (1,), generator=g))) + [2]
        rejected = words(resp_len + int(torch.randint(-10, 11, (1,), generator=g))) + [2]
        imgs = [image() for _ in range(k)]
        per_sample.append((p, chosen, rejected, imgs))
        for j in range(k):
            rows.append(p + chosen)
            pixels.append(imgs[j])
            resp.append(len(chosen))
        rows.append(p + rejected)
        pixels.append(imgs[0])
        resp.append(len(rejected))

    def batch(sel):
        width = max(len(rows[i]) for i in sel)
        ids = torch.zeros(len(sel), width, dtype=torch.long)
        att = torch.zeros(len(sel), width, dtype=torch.long)
        mask = torch.zeros(len(sel), width, dtype=torch.bool)
        for r, i in enumerate(sel):
            n = len(rows[i])
            ids[r, :n] = torch.tensor(rows[i])
            att[r, :n] = 1
            mask[r, n - resp[i] : n] = True
        if family == "qwen2.5-vl":  # one flat patch tensor for the batch + a grid row per image
            pv = torch.cat([pixels[i] for i in sel]).to(device=device, dtype=dtype)
            inputs = {"input_ids": ids.to(device), "attention_mask": att.to(device), "pixel_values": pv,
                      "image_grid_thw": torch.tensor([side] * len(sel), device=device),
                      "mm_token_type_ids": (ids == img_tok).long().to(device)}  # 3-D RoPE needs it
            step = torch.arange(len(sel) + 1)
            offsets = {k: step for k in inputs} | {"pixel_values": step * pixels[sel[0]].shape[0]}
            return SequenceBatch(inputs, mask.to(device), offsets=offsets)
        pv = torch.stack([pixels[i] for i in sel]).to(device=device, dtype=dtype)
        inputs = {"input_ids": ids.to(device), "attention_mask": att.to(device), "pixel_values": pv}
        if family == "idefics2":
            inputs["pixel_attention_mask"] = torch.ones(
                len(sel), 1, side, side, dtype=torch.bool, device=device
            )
        return SequenceBatch(inputs, mask.to(device))

    c1 = k + 1
    ours = batch(list(range(b * c1)))
    pair = batch([r for s in range(b) for r in (s * c1, s * c1 + k)])
    lst = batch([s * c1 + j for s in range(b) for j in range(k)])
    return ours, pair, lst


def run_family(family: str, args, device: str, dtype) -> dict:
    from peft import get_peft_model

    from lpoi.config import LoraParams
    from lpoi.train.lora import lora_config

    t0 = time.perf_counter()
    model, n_img, side = build(family, args.tiny, device, dtype)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    peft_model = get_peft_model(model, lora_config(LoraParams(r=8, alpha=8, dropout=0.0)))
    perturb_lora(peft_model, std=0.01)
    peft_model.train()
    n_params = sum(p.numel() for p in peft_model.parameters())
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    build_s = time.perf_counter() - t0
    b, k = args.batch, args.k
    ours, pair, lst = make_batches(
        family, model, n_img, side, b=b, k=k, resp_len=args.resp_len, device=device, dtype=dtype
    )
    with torch.no_grad(), peft_model.disable_adapter():  # the reference stage, once
        peft_model.eval()
        ref = sequence_logps(peft_model, ours, micro_batch_sequences=args.micro_batch_sequences).view(
            b, k + 1
        )
        peft_model.train()

    peaks = {"official": 0, "ours": 0}
    cuda = device.startswith("cuda")

    def measured(name, fn):
        def run():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            loss = fn()
            if cuda:
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
            return loss

        return run

    ta, tb, la, lb = alternate(
        measured("official", lambda: official_step(peft_model, pair, lst, b, k, args.beta)),
        measured(
            "ours", lambda: ours_step(peft_model, ours, ref, b, k, args.beta, args.micro_batch_sequences)
        ),
        args.steps,
        zero_grad=lambda: peft_model.zero_grad(set_to_none=True),
    )
    res = {
        "family": family,
        "params_b": n_params / 1e9,
        "trainable_m": n_train / 1e6,
        "build_s": build_s,
        "seq_len": int(ours.inputs["attention_mask"].sum(-1).max()),
        "official_s": statistics.median(ta),
        "ours_s": statistics.median(tb),
        "loss_official": la[-1],
        "loss_ours": lb[-1],
        "loss_diff": max(abs(x - y) for x, y in zip(la, lb)),
        "peak_official_gb": peaks["official"] / 2**30,
        "peak_ours_gb": peaks["ours"] / 2**30,
    }
    res["speedup"] = res["official_s"] / res["ours_s"]
    return res  # the model goes out of scope here; main() frees the memory before the next one


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small configs on the CPU (tests the script's logic)")
    ap.add_argument("--models", default="idefics2,llava,qwen2.5-vl")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per formulation (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=1, help="samples per step (the paper: 1 per device)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--resp-len", type=int, default=200, help="answer length in tokens (+- 10)")
    ap.add_argument("--micro-batch-sequences", type=int, default=None)
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args(argv)
    if args.tiny:
        device = "cpu"
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --tiny to run the small CPU version")
    else:
        device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16
    t0 = time.perf_counter()
    results = []
    for family in args.models.split(","):
        r = run_family(family.strip(), args, device, dtype)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        results.append(r)
        print(
            f"[{r['family']}] {r['params_b'] * 1e3:.1f}M params, LoRA {r['trainable_m']:.2f}M trainable, "
            "built in "
            f"{r['build_s']:.0f}s, longest sequence {r['seq_len']} tokens",
            flush=True,
        )
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny)"
    print(
        f"\n== gpu_smoke: {name}, bf16, LoRA r8 all-linear, gradient checkpointing, batch {args.batch} x "
        f"K={args.k}, ~{args.resp_len}-token answers, {args.steps} timed steps =="
    )
    print(
        f"{'model':10s} {'official s':>10s} {'ours s':>8s} {'speedup':>8s} {'peak off GB':>11s} "
        f"{'peak ours GB':>12s} "
        f"{'<48GB':>6s} {'loss diff':>9s}"
    )
    for r in results:
        fits = "yes" if max(r["peak_official_gb"], r["peak_ours_gb"]) < 48 else "NO"
        print(
            f"{r['family']:10s} {r['official_s']:10.3f} {r['ours_s']:8.3f} {r['speedup']:8.2f} "
            f"{r['peak_official_gb']:11.1f} {r['peak_ours_gb']:12.1f} {fits:>6s} {r['loss_diff']:9.2e}"
        )
    print(f"total {time.perf_counter() - t0:.0f}s")
    print("speedup=" + ",".join(f"{r['family']}:{r['speedup']:.2f}" for r in results))


if __name__ == "__main__":
    main()
