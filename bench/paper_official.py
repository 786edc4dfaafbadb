"""The authors' experiment on one GPU, as soon as the files are on disk (docs/paper.md, "GPU recipe").

    python bench/paper_official.py --model llava-1.5-7b eval    # the released LPOI checkpoint, no training
    python bench/paper_official.py --model llava-1.5-7b train   # LPOI from the released lists (dvc exp run)
    python bench/paper_official.py --model idefics2-8b all --dry-run   # print the commands only

``eval`` composes ``experiment=paper-<model>`` with ``generate.adapter`` set to the released adapter into
``runs/paper-<model>/released/params.yaml`` and runs the generate and score stages on the three benchmarks
(nothing is trained); REPORT-style numbers land in ``runs/paper-<model>/released/*.json`` and a table beside
the paper's row is printed. ``train`` is ``dvc exp run -S experiment=paper-<model> -S data=lpoi-official``:
the whole DAG from the released lists (detect/segment/verify skipped), ending in report/REPORT.md with the
paper's row beside ours.

Needs (checked first, one line per missing piece with the command that fetches it): the base model in the
Hugging Face cache, ``data/external/{amber,objhal,mmhal}``, ``models/external/lpoi-official-<model>`` (eval)
and ``data/external/lpoi-official`` (train); an OpenAI-compatible judge for MMHal-Bench and Object HalBench
(``OPENAI_API_KEY``, or ``--judge-url``/``--judge-model`` for another endpoint). It cannot run on the
machines this project is built on (no hub, no Drive): it was only run with ``--dry-run`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"idefics2-8b": "HuggingFaceM4/idefics2-8b", "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
          "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf"}
BENCHES = ("amber", "objhal", "mmhal")


def compose(overrides: list[str]) -> dict:
    sys.path.insert(0, str(REPO))
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from lpoi.config import validate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        raw = OmegaConf.to_container(hydra_compose(config_name="config", overrides=overrides), resolve=True)
    validate(raw)  # the project's one-line message on a bad override
    return raw


def missing(model: str, what: str) -> list[str]:
    out = []
    for b in BENCHES:
        if not (REPO / "data/external" / b).is_dir():
            out.append(f"data/external/{b}: python stages/download.py {b}")
    if what in ("eval", "all") and not (REPO / f"models/external/lpoi-official-{model}").is_dir():
        out.append(f"models/external/lpoi-official-{model}: python stages/download.py lpoi-official-{model}")
    if what in ("train", "all"):
        root = REPO / "data/external/lpoi-official"
        for rel in ("sample_10k_llava.json", "images", "ours_cmask_until_list5/ours_cmask_until100"):
            if not (root / rel).exists():
                out.append(f"data/external/lpoi-official/{rel}: python stages/download.py lpoi-official")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(MODELS[model], local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache (or no hub library): say how to get it
        out.append(f"{MODELS[model]} (hub cache): huggingface-cli download {MODELS[model]}")
    return out


def run(cmd: list[str], dry: bool) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    if not dry:
        subprocess.run(cmd, cwd=REPO, check=True)


def judge_overrides(a) -> list[str]:
    out = []
    if a.judge_url:
        out.append(f"judge.base_url={a.judge_url}")
    if a.judge_model:
        out.append(f"judge.model={a.judge_model}")
    return out


def evaluate(a) -> None:
    import yaml

    out = REPO / "runs" / f"paper-{a.model}" / "released"
    out.mkdir(parents=True, exist_ok=True)
    adapter = f"models/external/lpoi-official-{a.model}/adapter"
    params = compose([f"experiment=paper-{a.model}", f"generate.adapter={adapter}", *judge_overrides(a), *a.set])
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = str((out / "params.yaml").relative_to(REPO))
    rel = out.relative_to(REPO)
    for b in BENCHES:
        run([sys.executable, "stages/generate.py", b, "--params", p, "--out", f"{rel}/answers/{b}",
             "--metrics", f"{rel}/generate_{b}.json"], a.dry_run)
        run([sys.executable, "stages/score.py", b, "--params", p, "--answers", f"{rel}/answers/{b}/answers.jsonl",
             "--out", f"{rel}/{b}.json", "--work", f"{rel}/scores/{b}"], a.dry_run)
    if not a.dry_run:
        compare(out, MODELS[a.model])


def compare(out: Path, name: str) -> None:
    """Our numbers for the released checkpoint beside the paper's LPOI row (lpoi/report/paper_table1.json)."""
    paper = json.loads((REPO / "lpoi/report/paper_table1.json").read_text(encoding="utf-8"))["rows"][name]["lpoi"]
    paths = {"amber": ("generative",), "objhal": (), "mmhal": ()}
    print(f"| metric | released checkpoint, scored here | paper (Table 1, {name} + LPOI) |\n|---|---:|---:|")
    for key, theirs in paper.items():
        bench, metric = key.split(".")
        d = json.loads((out / f"{bench}.json").read_text(encoding="utf-8"))
        for part in paths[bench]:
            d = d.get(part, {})
        ours = d.get(metric)
        print(f"| {key} | {'–' if ours is None else f'{ours:.2f}'} | {'–' if theirs is None else theirs} |")


def train(a) -> None:
    cmd = ["dvc", "exp", "run", "-n", f"paper-{a.model}-released-lists", "-S", f"experiment=paper-{a.model}",
           "-S", "data=lpoi-official"]
    for o in judge_overrides(a) + a.set:
        cmd += ["-S", o]
    run(cmd, a.dry_run)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("eval", "train", "all"))
    ap.add_argument("--model", choices=sorted(MODELS), default="llava-1.5-7b")
    ap.add_argument("--judge-url", help="an OpenAI-compatible endpoint (default: the preset's, api.openai.com)")
    ap.add_argument("--judge-model", help="the judge at that endpoint (the paper's gpt-4-0314 is retired)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more -S overrides")
    ap.add_argument("--dry-run", action="store_true", help="check nothing, run nothing: print the commands")
    a = ap.parse_args(argv)
    if not a.dry_run:
        gaps = missing(a.model, a.what)
        if gaps:
            print("error: not on disk yet: " + "; ".join(gaps), file=sys.stderr)
            return 2
        if not a.judge_url and not os.environ.get("OPENAI_API_KEY"):
            print("error: the preset judges with OpenAI's API: set OPENAI_API_KEY, or pass --judge-url/--judge-model",
                  file=sys.stderr)
            return 2
    if a.what in ("eval", "all"):
        evaluate(a)
    if a.what in ("train", "all"):
        train(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
