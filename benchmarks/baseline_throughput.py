"""The lexical baseline as a CPU triage pass, one core: fit on ESConv's rated sessions (penalty
chosen by client-disjoint inner CV), then score a corpus of ESConv sessions replicated under new
ids; prints fit seconds and scoring sessions/s.

.venv/bin/python benchmarks/baseline_throughput.py [--copies 14]   # 14 × 1,496 = 20,944 sessions
"""

import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

from _common import esconv_corpus, workdir  # noqa: E402

from care_ray.evaluation.baseline import BaselineConfig, run_baseline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=14, help="ESConv replicas in the corpus")
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    labelled = esconv_corpus()
    target = esconv_corpus(args.copies)
    config = BaselineConfig(
        sessions=str(labelled),
        out=workdir() / "baseline-triage",
        truth=["labels.empathy=bond", "labels.relevance=goal,task"],
        score=str(target),
        batch_size=args.batch_size,
    )
    manifest = run_baseline(config)
    scored = manifest["scored"]
    print(
        f"fit: {manifest['counts']['labelled']} rated sessions, {len(manifest['fits'])} models "
        f"× {len(config.alphas)} penalties × {config.inner_folds} inner folds in "
        f"{manifest['fit_seconds']:.1f} s"
    )
    print(
        f"score: {scored['sessions_scored']} sessions in {scored['parts']} parts, "
        f"{scored['seconds']:.1f} s → {scored['sessions_per_second']:.0f} sessions/s on one core"
    )
    print(f"total {manifest['seconds']:.1f} s")


if __name__ == "__main__":
    main()
