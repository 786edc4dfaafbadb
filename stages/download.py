"""Fetch one dataset or checkpoint of lpoi/sources.json into the layout the pipeline expects (verified, resumable).

    python stages/download.py NAME [--dest DIR] [--offline] [--no-progress]
        datasets go to data/external/NAME, checkpoints (sam-vit-b, sam-vit-h, groundingdino-swint-ogc) to
        models/external/NAME by default
    python stages/download.py --list
    python stages/download.py --profile data|BENCH --dest DIR   (the DVC stage: the dataset the current
        profile names; the bundled sample and mini sets need nothing, which is recorded in DIR/BUNDLED)
"""

import argparse
import sys
from pathlib import Path

import _common  # (puts this checkout's lpoi first on sys.path, as in every stage)

import lpoi.download as dl


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="dataset or checkpoint name (see --list)")
    ap.add_argument("--dest", help="destination folder (default: data/external/NAME, checkpoints models/external/NAME)")
    ap.add_argument("--list", action="store_true", help="list the recorded datasets and checkpoints and exit")
    ap.add_argument("--offline", action="store_true", default=None, help="no network (also HF_HUB_OFFLINE=1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--sources", help="alternative sources JSON (default: lpoi/sources.json)")
    ap.add_argument("--profile", help="'data' or a benchmark (amber, objhal, mmhal): fetch what params.yaml names")
    ap.add_argument("--params", default="params.yaml", help="with --profile (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.profile:
        from lpoi.config import load_params

        p = load_params(a.params)
        bundled = p.data.name == "sample" if a.profile == "data" else p.bench.name == "mini"
        a.name = p.data.name if a.profile == "data" else a.profile
        if bundled:
            Path(a.dest).mkdir(parents=True, exist_ok=True)
            (Path(a.dest) / "BUNDLED").write_text(f"{a.profile}: the bundled set in data/sample is used; nothing to fetch\n")
            print(f"{a.profile}: bundled with the repository, nothing to download")
            return 0
    if a.list:
        specs = dl.load_sources(a.sources)
        w = max(map(len, specs), default=0)
        for name, spec in specs.items():
            todo = sum(f.sha256 is None for f in spec.files)
            print(f"{name:<{w}} {spec.kind}, {len(spec.files)} file(s), {todo} sha256 to be filled | {spec.description}\n"
                  f"{'':<{w}} licence: {spec.licence}")
        return 0
    if not a.name:
        ap.error("NAME is required (or --list)")
    try:
        spec = dl.load_sources(a.sources).get(a.name)
        root = spec.default_root if spec is not None else "data/external"  # unknown names: fetch says so
        report = dl.fetch(a.name, a.dest or Path(root) / a.name, offline=a.offline,
                          progress=not a.no_progress, sources=a.sources)
    except (dl.DatasetUnavailable, dl.DownloadError, dl.UnsafeArchiveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # ChecksumMismatch is a DownloadError
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    _common.run(lambda: sys.exit(main()))  # bad params, a full disk: one line, as in every stage
