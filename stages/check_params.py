"""check_params: validate params.yaml before any other stage runs -> a stamp file every stage depends on.

DVC removes a stage's outputs just before it runs the stage: a stage that found a hand-edited params.yaml
invalid only after that would have lost them (train: models/lpoi/adapter and the curves). This stage is
upstream of every other one, and DVC runs stages in the DAG's order, so a bad params.yaml stops
`dvc repro` here with one line, before any output is removed. The stamp's bytes never change (a valid edit
re-runs only the stages that declare the edited params)."""

import _common
from _common import parser, run

STAMP = "params.yaml is valid (stages/check_params.py)\n"


def main():
    ap = parser(__doc__)
    ap.add_argument("--out", required=True, help="stamp file written when the params are valid")
    args = ap.parse_args()
    _common.load(args)  # exits with one line per offending key

    from lpoi.io import atomic_write_text

    atomic_write_text(args.out, STAMP)


if __name__ == "__main__":
    run(main)
