"""List-generation throughput and memory: prepare -> detect -> segment -> verify -> lists.

    python bench/listgen.py                 # embedded-default models (tiny/*), CPU: samples/s per stage,
                                            # peak RSS at N and 4N samples, last line rss_ratio=X.XX
    python bench/listgen.py --n 32
    python bench/listgen.py --real-size     # GPU: real-size random-init Grounding-DINO-Tiny + SAM ViT-B
    python bench/listgen.py --backends      # GPU: the original packages vs the transformers ports, real size
    python bench/listgen.py --backends --tiny --n 4   # the same comparison on the tiny cards (CPU proof)

Data: N synthetic samples like the embedded default — drawn scenes (coloured shapes on a background,
unique per sample) with template answers naming the drawn objects ("The image shows a red ball. Next to
it there is a green box and a blue kite."), written as an LPOI/mDPO pairs file + image folder in a temp dir.
Every stage runs through the library functions the DVC stages call (``run_prepare``, ``run_detect``,
``run_segment``, ``run_verify``, ``iter_build_lists``), streaming from and to files.

Memory: each size runs in a fresh subprocess and reports its own peak RSS (``resource.getrusage``
``ru_maxrss``); streaming stages must keep peak memory flat, so ``rss_ratio`` = peak(4N) / peak(N) must be
<= 1.2 (exit status 1 otherwise). Models are loaded once before the timed stages (load time printed
separately); samples/s = samples / wall seconds of the stage.

``--real-size``: Grounding-DINO-Tiny (Swin-T backbone, BERT-base text encoder, 900 queries, 256 text
tokens; the architecture of ``IDEA-Research/grounding-dino-tiny``) and SAM ViT-B (``facebook/sam-vit-base``)
built from the config dicts below with random weights — no network needed — on cuda in bf16 (``--dtype``),
640x480 images, with the real processors' default sizes (Grounding DINO: short side 800, long <= 1333;
SAM: 1024). Random weights detect nothing at the real thresholds, so this mode runs detect with thresholds
0 (every candidate gets a box: the same compute as a real run, where the forward pass does not depend on
the thresholds, and a realistic load for segment). Verify is off in this mode (its cost is that of the
chosen VLM, 1 forward per try, not of this stage's code); the tokenizer is the tiny model's BERT-style
WordPiece (no BERT vocab offline; it spells unknown words in more tokens, so prompts are, if anything,
longer). Target: >= 10 samples/s for detect + segment on one H100 (10k pairs in under 20 minutes).

``--backends`` (issue 13): Grounding-DINO Swin-T (``groundingdino-py``, the ``groundingdino_swint_ogc``
architecture with a BERT-base-sized text encoder) vs transformers' port, and SAM ViT-B (``segment-anything``)
vs ``SamModel`` — each pair with the *same* random weights (the original built with a fixed seed, moved to
the port by :mod:`lpoi.models`' key mapping), on the same N drawn 640x480 scenes, through the backends the
stages use (``encode`` + ``detect``/``segment``, each implementation's own preprocessing). Each backend runs
in its own process: samples/s (encode + model; ``model`` = model calls only) and peak memory (GPU:
``max_memory_allocated``; CPU: peak RSS) side by side, and the largest box / mask disagreement between the
two. On cuda the ports run on bf16 weights and the originals under bf16 autocast (they cannot run on cast
weights), so their numbers differ at bf16 level there; ``--dtype float32`` compares like for like.
``--tiny`` uses the tiny cards instead (seconds on a CPU; proves the code path, measures nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# IDEA-Research/grounding-dino-tiny's architecture (its config.json), minus nothing that matters for speed.
GDINO_TINY = dict(
    backbone_config=dict(model_type="swin", image_size=224, patch_size=4, num_channels=3, embed_dim=96,
                         depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0,
                         out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4]),
    text_config=dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
    d_model=256, num_queries=900, max_text_len=256, num_feature_levels=4,
    encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
    encoder_attention_heads=8, decoder_attention_heads=8, encoder_n_points=4, decoder_n_points=4,
    two_stage=True, auxiliary_loss=False, position_embedding_type="sine",
)
# facebook/sam-vit-base's architecture.
SAM_VIT_B = dict(
    vision_config=dict(hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12,
                       image_size=1024, patch_size=16, window_size=14, global_attn_indexes=[2, 5, 8, 11],
                       mlp_dim=3072, num_pos_feats=128),
    prompt_encoder_config=dict(hidden_size=256, image_size=1024, patch_size=16, mask_input_channels=16),
    mask_decoder_config=dict(hidden_size=256, mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8,
                             iou_head_hidden_dim=256, num_multimask_outputs=3),
)

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
          "orange": (250, 140, 20), "purple": (140, 50, 170), "white": (245, 245, 245), "black": (15, 15, 15)}
OBJECTS = ("ball", "box", "kite", "car", "house", "tree")
ABSENT = ("cat", "dog", "bicycle", "bird", "umbrella", "clock")
QUESTIONS = ("What objects can you see in the image?", "Describe this image.", "What is in the picture?",
             "Is there a {o} in this image? Describe it.")


def _draw(d, obj: str, box, rgb) -> None:
    x0, y0, x1, y1 = box
    if obj == "ball":
        d.ellipse(box, fill=rgb)
    elif obj == "kite":
        d.polygon([((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)], fill=rgb)
    elif obj == "house":
        d.rectangle([x0, (y0 + y1) / 2, x1, y1], fill=rgb)
        d.polygon([(x0, (y0 + y1) / 2), ((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2)], fill=rgb)
    elif obj == "tree":
        d.rectangle([(x0 * 3 + x1) / 4 + 2, (y0 + y1) / 2, (x0 + x1 * 3) / 4 - 2, y1], fill=(110, 70, 30))
        d.ellipse([x0, y0, x1, (y0 + y1 * 2) / 3], fill=rgb)
    else:  # box, car
        d.rectangle(box, fill=rgb)


def make_data(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> tuple[Path, Path]:
    """N unique drawn scenes + an mDPO-style pairs.json naming the drawn objects (the chosen answer)."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    records = []
    for k in range(n):
        objs = rng.sample(OBJECTS, 3)
        cols = rng.sample(sorted(COLORS), 3)
        img = Image.new("RGB", size, (rng.randrange(120, 220), rng.randrange(160, 230), rng.randrange(180, 255)))
        d = ImageDraw.Draw(img)
        for j, (o, c) in enumerate(zip(objs, cols)):
            bw, bh = rng.randrange(w // 6, w // 3), rng.randrange(h // 5, h // 2)
            x0 = min(w - bw - 1, j * w // 3 + rng.randrange(0, max(1, w // 3 - bw)))
            y0 = rng.randrange(0, h - bh)
            _draw(d, o, [x0, y0, x0 + bw, y0 + bh], COLORS[c])
        name = f"scene_{k:06d}.png"
        img.save(img_dir / name)
        q = rng.choice(QUESTIONS).format(o=objs[0])
        chosen = f"The image shows a {cols[0]} {objs[0]}. Next to it there is a {cols[1]} {objs[1]} and a {cols[2]} {objs[2]}."
        rejected = chosen.replace(objs[0], rng.choice(ABSENT), 1)
        records.append({"id": f"bench-{k:06d}", "img_path": name, "prompt": q, "chosen": chosen, "rejected": rejected})
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps(records))
    return pairs, img_dir


def _real_size_models(device: str, dtype: str):
    import torch
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamModel,
        SamProcessor,
    )

    from lpoi.models import resolve, torch_dtype

    dt = torch_dtype(dtype)
    torch.manual_seed(0)
    with torch.device(device):
        det = GroundingDinoForObjectDetection(GroundingDinoConfig(**GDINO_TINY)).to(device=device, dtype=dt).eval()
        sam = SamModel(SamConfig(**SAM_VIT_B)).to(device=device, dtype=dt).eval()
    tok = BertTokenizerFast.from_pretrained(resolve("tiny/grounding-dino"))
    det_proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok)
    sam_proc = SamProcessor(image_processor=SamImageProcessor())
    return (det, det_proc), (sam, sam_proc)


def child(args) -> dict:
    """One full run at one size, in this process; returns timings and peak RSS."""
    import torch

    from lpoi.io import read_jsonl
    from lpoi.listgen.detect import run_detect
    from lpoi.listgen.interpolate import iter_build_lists
    from lpoi.listgen.objects import extract_candidates
    from lpoi.listgen.prepare import run_prepare
    from lpoi.listgen.segment import run_segment
    from lpoi.listgen.verify import run_verify, vlm_decider
    from lpoi.models import load_detector, load_segmenter, load_vlm
    from lpoi.stage import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    root = Path(args.workdir)
    size = (640, 480) if args.real_size else (128, 96)
    pairs, img_dir = make_data(root, args.n, size)
    res: dict = {"n": args.n, "device": device, "stages": {}}

    t = time.perf_counter()
    extract_candidates("warm up the tagger", "A red car.")  # NLTK load, once per process
    if args.real_size:
        det, seg = _real_size_models(device, args.dtype)
        vlm = None
    else:
        det = load_detector("tiny/grounding-dino", dtype=args.dtype, device=device)
        seg = load_segmenter("tiny/sam", dtype=args.dtype, device=device)
        vlm = load_vlm("tiny/idefics2", dtype=args.dtype, device=device)
    res["load_seconds"] = time.perf_counter() - t

    def timed(name, fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        res["stages"][name] = {"seconds": time.perf_counter() - t0, "n": args.n}
        if isinstance(out, dict):  # the stage's own counts, for the record
            keep = ("records_out", "written", "rejected", "rejects_by_reason", "fallback_used", "masks", "sam_masks",
                    "mask_fallback", "verified_true", "verified_false", "verified_null", "calls")
            res["stages"][name]["stats"] = {k: out[k] for k in keep if k in out}
        return out

    if device.startswith("cuda"):  # warm-up (CUDA context, kernels, allocator) on one batch, not timed
        w = root / "warm"
        w.mkdir()
        warm_pairs = w / "pairs.json"
        warm_pairs.write_text(json.dumps(json.loads(pairs.read_text())[: args.batch_size]))
        run_prepare(warm_pairs, img_dir, w / "prepared.jsonl", w / "rej.jsonl", 1.0)
        run_detect(w / "prepared.jsonl", w / "detect.jsonl", w / "rej_d.jsonl", model_name="-", model=det[0],
                   processor=det[1], batch_size=args.batch_size, box_threshold=0.0, text_threshold=0.0, progress=False)
        run_segment(w / "detect.jsonl", w / "segment.jsonl", w / "masks", model_name="-", model=seg[0],
                    processor=seg[1], batch_size=args.batch_size, rejects_path=w / "rej_s.jsonl", progress=False)
        torch.cuda.synchronize()

    d = root / "out"
    timed("prepare", lambda: run_prepare(pairs, img_dir, d / "prepared.jsonl", d / "prepare_rejects.jsonl", 0.5))
    thr = 0.0 if args.real_size else 0.35
    common = dict(progress=False, num_workers=args.prefetch)
    timed("detect", lambda: run_detect(d / "prepared.jsonl", d / "detect.jsonl", d / "detect_rejects.jsonl",
                                       model_name="-", model=det[0], processor=det[1], batch_size=args.batch_size,
                                       box_threshold=thr, text_threshold=thr, **common))
    timed("segment", lambda: run_segment(d / "detect.jsonl", d / "segment.jsonl", d / "masks", model_name="-",
                                         model=seg[0], processor=seg[1], batch_size=args.batch_size,
                                         max_masks_per_sample=3, rejects_path=d / "segment_rejects.jsonl", **common))
    decide = vlm_decider(*vlm, batch_size=args.batch_size) if vlm else None
    timed("verify", lambda: run_verify(d / "segment.jsonl", d / "prepared.jsonl", d / "verify.jsonl",
                                       d / "verify_rejects.jsonl", enabled=vlm is not None, decide=decide,
                                       max_tries=3, batch_size=args.batch_size, **common))

    def lists():
        tasks = ({"id": r["id"], "image_path": r["image_path"], "box": r["object"]["box"],
                  "mask_path": str(d / r["object"]["mask"])} for r in read_jsonl(d / "verify.jsonl"))
        n = 0
        with open(d / "lists.jsonl", "w") as f:
            for entry in iter_build_lists(tasks, d / "lists", size=5, mask_kind="sam", num_workers=args.list_workers):
                f.write(json.dumps(entry) + "\n")
                n += 1
        return n

    res["lists"] = timed("lists", lists)
    for st in res["stages"].values():
        st["samples_per_s"] = st["n"] / st["seconds"] if st["seconds"] > 0 else None
    gpu = ("detect", "segment")
    res["detect_segment_samples_per_s"] = args.n / sum(res["stages"][s]["seconds"] for s in gpu)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if device.startswith("cuda"):
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _spawn(args, n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lpoi-bench-listgen-") as tmp:
        cmd = [sys.executable, __file__, "--child", "--n", str(n), "--workdir", tmp, "--batch-size", str(args.batch_size),
               "--dtype", args.dtype, "--prefetch", str(args.prefetch), "--list-workers", str(args.list_workers),
               "--threads", str(args.threads)]
        if args.device:
            cmd += ["--device", args.device]
        if args.real_size:
            cmd.append("--real-size")
        env = dict(os.environ)
        env.setdefault("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data"))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"bench child for n={n} failed (exit {proc.returncode})")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _card_pairs(kind: str, tiny: bool):
    """(original-format weights, how to build each backend): the same seeded weights for both."""
    import torch
    from transformers import BertConfig

    from lpoi.models import groundingdino as gd
    from lpoi.models import resolve
    from lpoi.models import sam as sm
    from lpoi.models.tiny import _bert_wordpiece, _corpus_words

    if tiny:
        return resolve("tiny/groundingdino-py" if kind == "detect" else "tiny/segment-anything"), None
    torch.manual_seed(0)
    if kind == "segment":
        spec = sm.VARIANTS["vit_b"]
        return sm.build_original(spec), spec
    tok = _bert_wordpiece(_corpus_words())  # no BERT vocab offline (see --real-size)
    bert = BertConfig(**GDINO_TINY["text_config"])
    spec = gd.VARIANTS["swint_ogc"]
    return gd.build_original(spec, tok, bert), (spec, tok, bert)


def _backend(kind: str, name: str, tiny: bool, device: str, dtype: str):
    """One backend of the comparison, its weights equal to the other's (see :func:`_card_pairs`)."""
    import torch

    from lpoi.listgen import backends as B
    from lpoi.models import groundingdino as gd
    from lpoi.models import sam as sm
    from lpoi.models import torch_dtype

    weights, extra = _card_pairs(kind, tiny)
    if tiny:
        return (B.open_detector if kind == "detect" else B.open_segmenter)(name, weights, device=device, dtype=dtype)
    amp = B._autocast(dtype)
    if kind == "segment" and name == "segment-anything":
        return B.SegmentAnythingSegmenter(weights.to(device).eval(), extra, autocast=amp)
    if kind == "segment":
        from transformers import SamModel

        port = SamModel(sm.hf_config(extra))
        port.load_state_dict(sm.to_hf(weights.state_dict(), extra, target_keys=port.state_dict().keys()))
        return B.TransformersSegmenter(port.to(device, torch_dtype(dtype)).eval(), sm.hf_processor(extra))
    spec, tok, bert = extra
    if name == "groundingdino":
        return B.GroundingDinoDetector(gd.Original(weights.to(device).eval(), spec, tok), autocast=amp)
    from transformers import GroundingDinoForObjectDetection

    port = GroundingDinoForObjectDetection(gd.hf_config(spec, bert))
    port.load_state_dict(gd.to_hf(weights.state_dict(), port.state_dict().keys()), strict=False)
    del weights
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    return B.TransformersDetector(port.to(device, torch_dtype(dtype)).eval(), gd.hf_processor(spec, tok))


def backend_child(args) -> dict:
    """``--backends`` child: one backend over N scenes; timings, peak memory and its outputs."""
    import numpy as np
    import torch
    from PIL import Image

    from lpoi.listgen.objects import extract_candidates
    from lpoi.stage import pick_device

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs, img_dir = make_data(Path(args.workdir), args.n, (128, 96) if args.tiny else (640, 480))
    recs = json.loads(pairs.read_text())
    rows = [dict(r, image_path=str(img_dir / r["img_path"])) for r in recs]
    images = [Image.open(r["image_path"]).convert("RGB") for r in rows]
    t = time.perf_counter()
    be = _backend(args.kind, args.backend, args.tiny, device, args.dtype)
    load = time.perf_counter() - t
    if args.kind == "detect":
        work = [[c["phrase"] for c in extract_candidates(r["prompt"], r["chosen"], max_candidates=8)] for r in rows]
        run = lambda enc: be.detect(enc, 0.0, 0.0)  # thresholds 0: every candidate gets a box (same compute)
    else:
        work = [[[w * k / 4, h * k / 4, w * (k + 2) / 4, h * (k + 2) / 4] for k in range(3)]
                for w, h in (im.size for im in images)]  # 3 boxes per image, as segment's max_masks default
        run = be.segment
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    bs = args.batch_size
    run(be.encode(rows[:bs], images[:bs], work[:bs]))  # warm-up, not timed
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out, t_model, t0 = [], 0.0, time.perf_counter()
    for i in range(0, len(rows), bs):
        enc = be.encode(rows[i:i + bs], images[i:i + bs], work[i:i + bs])
        t1 = time.perf_counter()
        out += run(enc)
        sync()
        t_model += time.perf_counter() - t1
    total = time.perf_counter() - t0
    res = {"kind": args.kind, "backend": args.backend, "n": len(rows), "device": device, "load_seconds": load,
           "samples_per_s": len(rows) / total, "model_samples_per_s": len(rows) / t_model,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if args.kind == "detect":
        res["out"] = out
    else:  # masks are large: keep each mask's pixel count and a hash-free fingerprint (row sums)
        res["out"] = [[[int(m.sum()), np.asarray(m.sum(1)).tolist()] for m in ms] for ms, _ in out]
    return res


def _compare(a: dict, b: dict) -> str:
    """Largest disagreement between two backends' outputs on the same scenes."""
    if a["kind"] == "detect":
        same = all([d["index"] for d in x] == [d["index"] for d in y] for x, y in zip(a["out"], b["out"]))
        box = max((max(abs(p - q) for p, q in zip(u["box"], v["box"])) for x, y in zip(a["out"], b["out"])
                   for u, v in zip(x, y)), default=0.0)
        return f"same detected phrases: {same}, max box diff {box:.2f} px"
    px = max((sum(abs(p - q) for p, q in zip(u[1], v[1])) for x, y in zip(a["out"], b["out"]) for u, v in zip(x, y)),
             default=0)
    return f"max mask disagreement >= {px} px (row-sum L1)"


def compare_backends(args) -> int:
    results = {}
    for kind, names in (("detect", ("groundingdino", "transformers")), ("segment", ("segment-anything", "transformers"))):
        for name in names:
            with tempfile.TemporaryDirectory(prefix="lpoi-bench-backends-") as tmp:
                cmd = [sys.executable, __file__, "--backend-child", "--kind", kind, "--backend", name, "--n", str(args.n),
                       "--workdir", tmp, "--batch-size", str(args.batch_size), "--dtype", args.dtype,
                       "--threads", str(args.threads)] + (["--device", args.device] if args.device else []) + \
                      (["--tiny"] if args.tiny else [])
                env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
                env.setdefault("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data"))
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), check=False)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr[-4000:])
                    raise SystemExit(f"bench child {kind}/{name} failed (exit {proc.returncode})")
                results[(kind, name)] = json.loads(proc.stdout.strip().splitlines()[-1])
        a, b = (results[(kind, n)] for n in names)
        mem = "peak_gpu_mib" if "peak_gpu_mib" in a else "peak_rss_mib"
        print(f"{kind:<7} n={a['n']} device={a['device']} dtype={args.dtype}  " + "  |  ".join(
            f"{r['backend']}: {r['samples_per_s']:.3g} samples/s (model {r['model_samples_per_s']:.3g}), "
            f"{mem}={r[mem]:.0f}, load {r['load_seconds']:.1f}s" for r in (a, b))
            + f"  |  original/port speed {a['samples_per_s'] / b['samples_per_s']:.2f}; {_compare(a, b)}", flush=True)
    summary = {f"{k}/{n}": {x: v for x, v in r.items() if x != "out"} for (k, n), r in results.items()}
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="samples of the small run (the large one has 4N)")
    ap.add_argument("--real-size", action="store_true", help="real-size random-init Grounding-DINO-Tiny + SAM ViT-B")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32 (default on CPU) | bfloat16 (default --real-size) | float16")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prefetch", type=int, default=None,
                    help="threads preparing the next batches (default 1; 4 with --real-size)")
    ap.add_argument("--list-workers", type=int, default=None,
                    help="processes for the lists PNGs (default 0; 4 with --real-size)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--sizes", default="1,4", help="multiples of N to run, each in a fresh process")
    ap.add_argument("--backends", action="store_true",
                    help="original groundingdino-py / segment-anything vs the transformers ports (same weights)")
    ap.add_argument("--tiny", action="store_true", help="with --backends: the tiny cards (CPU proof)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dtype is None:
        from lpoi.stage import pick_device

        gpu = pick_device(args.device).startswith("cuda")
        args.dtype = "bfloat16" if args.real_size or (args.backends and gpu and not args.tiny) else "float32"
    if args.prefetch is None:
        args.prefetch = 4 if args.real_size else 1
    if args.list_workers is None:
        args.list_workers = 4 if args.real_size else 0
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if args.backend_child:
        print(json.dumps(backend_child(args)))
        return 0
    if args.backends:
        return compare_backends(args)
    runs = {}
    for m in [int(x) for x in args.sizes.split(",")]:
        r = _spawn(args, m * args.n)
        runs[m] = r
        stages = "  ".join(f"{s}={v['samples_per_s']:.2f}" for s, v in r["stages"].items())
        print(f"n={r['n']:5d} device={r['device']} load={r['load_seconds']:.1f}s  samples/s: {stages}  "
              f"detect+segment={r['detect_segment_samples_per_s']:.2f}  lists_out={r['lists']}  "
              f"peak_rss={r['peak_rss_mib']:.0f} MiB" + (f"  peak_gpu={r['peak_gpu_mib']:.0f} MiB" if 'peak_gpu_mib' in r else ""),
              flush=True)
        print("        " + json.dumps({s: v.get("stats", {}) for s, v in r["stages"].items()}), flush=True)
    if len(runs) >= 2:
        lo, hi = runs[min(runs)], runs[max(runs)]
        ratio = hi["peak_rss_mib"] / lo["peak_rss_mib"]
        print(f"rss_ratio={ratio:.2f}")
        return 0 if ratio <= 1.2 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
