"""Fine-tuning job entrypoint for `ray job submit`: the same options as `care-ray finetune`.

    ray job submit --working-dir . -- python jobs/finetune.py --config configs/finetune-llama-3.1-8b.yaml --out /abs/run

Inside a submitted job RAY_ADDRESS is set, so the trainer joins that cluster; run directly, it
starts a local Ray. Prints the cross-fold summary as JSON on stdout.
"""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # `python jobs/finetune.py` from the working dir

from care_ray.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["finetune", *sys.argv[1:]], prog_name="jobs/finetune.py")
