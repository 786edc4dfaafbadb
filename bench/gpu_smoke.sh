#!/usr/bin/env bash
# LoRA training steps of real-size random-init Idefics2-8B, LLaVA-1.5-7B and Qwen2.5-VL-7B on one GPU (bf16,
# gradient checkpointing): step time, peak GPU memory and the official-vs-ours speedup. No network needed.
# Budget: under 6 minutes on one H100 for the first two; Qwen2.5-VL-7B (added later, not yet run on a GPU) is
# estimated at ~2 more, hence the 480 s default limit (--models idefics2,llava runs the measured pair only). Extra arguments go to bench/gpu_smoke.py (e.g. --steps 5, --tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_SMOKE_TIMEOUT:-480}" python bench/gpu_smoke.py "$@"
