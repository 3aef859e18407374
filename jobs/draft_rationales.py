"""Rationale-drafting job entrypoint for `ray job submit`: the same options as
`care-ray rationales draft` (a teacher model on the cluster's GPUs, scoring's engine path).

ray job submit --working-dir . -- python -m jobs.draft_rationales --sessions S --teacher T --out O
"""

import sys

from care_ray.cli import app

if __name__ == "__main__":
    app(["rationales", "draft", *sys.argv[1:]], prog_name="jobs.draft_rationales")
