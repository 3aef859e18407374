"""The synthetic scored corpus for the analytics benchmarks: `python benchmarks/synthetic_corpus.py
OUT --sessions N`. The generator lives in care_ray.analytics.synthetic (the demo uses its small
setting for counselor cards); this script and `import synthetic_corpus` in the benchmarks reach it
here."""

import sys

from care_ray.analytics import synthetic
from care_ray.analytics.synthetic import *  # noqa: F403 - the benchmarks' names, as before

sys.modules[__name__] = synthetic  # setting SESSIONS_PER_COUNSELOR here sets the generator's

if __name__ == "__main__":
    synthetic.main()
