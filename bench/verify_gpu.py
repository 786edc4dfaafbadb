"""Throughput of the verify stage's VLM call at real size: random-init Idefics2-8B (bf16, one GPU).

    python bench/verify_gpu.py [--n 128] [--batch-size 16] [--tiny]

Each sample is one verify try: the fully hidden 640x480 image, a question and a ~40-token chosen answer
through the real Idefics2 processor (980 px, no image splitting, 64 image tokens, the chat template) and one
forward for the "Yes"/"No" next-token log-probs (:func:`lpoi.listgen.verify.verify_scores`). The tokenizer is
the tiny model's (no hub access on the GPU box); its ids all fall inside the 8B vocabulary, and the prompt
lengths are within a few tokens of the real tokenizer's. Prints samples/s (tries per second) last.
``--tiny`` runs the same logic on the CPU with the tiny config (to test the script).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from gpu_smoke import IDEFICS2_8B, IDEFICS2_TINY  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)

    from PIL import Image, ImageDraw
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessor,
        Idefics2Processor,
    )

    from lpoi.listgen.verify import verify_scores
    from lpoi.models import load_processor

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tiny_proc = load_processor("tiny/idefics2")
    tok = tiny_proc.tokenizer
    cfg = Idefics2Config(**(IDEFICS2_TINY if args.tiny else IDEFICS2_8B))
    cfg.image_token_id = tok.convert_tokens_to_ids("<image>")
    n_img = cfg.perceiver_config.resampler_n_latents
    side = cfg.vision_config.image_size
    proc = Idefics2Processor(
        image_processor=Idefics2ImageProcessor(do_image_splitting=False, size={"longest_edge": side, "shortest_edge": 378
                                                                                if not args.tiny else 16}),
        tokenizer=tok, image_seq_len=n_img, chat_template=tiny_proc.chat_template)
    torch.manual_seed(0)
    with torch.device(device):
        model = Idefics2ForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()

    images = []
    for i in range(args.n):
        im = Image.new("RGB", (640, 480), (200, 220, 240))
        d = ImageDraw.Draw(im)
        d.rectangle([40 + i % 50, 60, 300, 260], fill=(0, 0, 0))  # the hidden object
        d.ellipse([380, 200, 560, 380], fill=(220, 40, 40))
        images.append(im)
    questions = ["What objects can you see in the image?"] * args.n
    answers = ["The image shows a red car parked next to a green tree. Next to it there is a blue bench and a "
               "small dog sitting on the grass near the road."] * args.n

    verify_scores(model, proc, images[: args.batch_size], questions[: args.batch_size], answers[: args.batch_size],
                  batch_size=args.batch_size)  # warm-up: CUDA context, kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scores = verify_scores(model, proc, images, questions, answers, batch_size=args.batch_size)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert len(scores) == args.n and all(map(lambda s: all(map(lambda x: x == x, s)), scores))  # no NaN
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(f"verify: {args.n} tries, batch {args.batch_size}, {dt:.2f} s, peak GPU {peak:.1f} GB, {device}, {dtype}")
    print(f"samples_per_s={args.n / dt:.2f}")


if __name__ == "__main__":
    main()
