"""Fine-tuning as a Ray job: parse arguments, make one library call.

    ray job submit --working-dir . -- python jobs/finetune.py --config configs/finetune-llama-3.1-8b.yaml

Inside a submitted job RAY_ADDRESS is set, so the trainer joins that cluster; run directly, it
starts a local Ray. Prints the cross-fold summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML config (configs/finetune-*.yaml)")
    parser.add_argument("--folds", help="override the config's held-out folds, e.g. 0 or 0,1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from care_ray.training.config import ConfigError, load_finetune_config
    from care_ray.training.trainer import run_finetune

    overrides = {"folds": [int(f) for f in args.folds.split(",")]} if args.folds else None
    try:
        cfg = load_finetune_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(run_finetune(cfg), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
