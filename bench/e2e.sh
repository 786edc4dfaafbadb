#!/usr/bin/env bash
# Wall time of a cold `dvc repro` of the embedded default and of the no-op re-run, in a scratch copy.
# Targets on a 2-core machine: cold <= 300 s, no-op <= 10 s.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$repo"
git ls-files --cached --others --exclude-standard -z | xargs -0 -I{} cp --parents {} "$work/" 2>/dev/null || true
rm -f "$work/dvc.lock"
cd "$work"
git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm bench
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
export NLTK_DATA="${NLTK_DATA:-$repo/../shared/nltk_data}"
t0=$(date +%s.%N); dvc repro >cold.log 2>&1 || { tail -40 cold.log; exit 1; }; t1=$(date +%s.%N)
dvc repro >noop.log 2>&1; t2=$(date +%s.%N)
cold=$(python -c "print($t1 - $t0)"); noop=$(python -c "print($t2 - $t1)")
echo "stages_run=$(grep -c "Running stage" cold.log)"
printf 'cold_repro_s=%.1f\nnoop_repro_s=%.1f\n' "$cold" "$noop"
