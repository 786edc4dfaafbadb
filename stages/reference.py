"""reference: the frozen base model's log-probs of every unique (prompt, image, answer) sequence, computed once.

Depends only on the base model, the lists and the tokenisation params, so experiments over train.* reuse it.
Rows are keyed by content (model, token ids, image bytes), so nothing computed for other lists is reused.
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--lists", required=True, help="the lists stage's folder (lists.jsonl)")
    ap.add_argument("--out", required=True, help="output folder (reference.jsonl)")
    ap.add_argument("--metrics", help="metrics JSON to write (timings go beside it, to <name>.timings.json)")
    args = ap.parse_args()
    p = _common.load(args)
    _common.use_engine(p)
    r, m = p.reference, p.model

    from lpoi.stage import open_stage, pick_device
    from lpoi.train.collate import Tokenization
    from lpoi.train.reference import run_reference

    with open_stage("reference", args, models=[m.name]) as st:
        stats = run_reference(f"{args.lists}/lists.jsonl", st.path / "reference.jsonl", model_name=m.name, dtype=m.dtype,
                              micro_batch_sequences=r.micro_batch_sequences, max_length=r.max_length,
                              device=pick_device(m.device), journal=True, max_pixels=m.max_pixels,
                              trust_remote_code=m.trust_remote_code, model_digest=st.parts[f"model {m.name}"],
                              tokenization=Tokenization.of(r))
        st.finish(args.metrics, stats.pop("output"), stats)


if __name__ == "__main__":
    run(main)
