"""What glibc's moving mmap threshold costs a CPU fine-tune (issue #29): peak RSS and tokens/s of
LoRA steps on SmolLM2-135M-Instruct (r 16, dropout 0.05, AdamW, fp32, one thread), one sequence of
900-2,300 random tokens a step, as packed micro-batches of varying length give, with glibc's
default and with MALLOC_MMAP_THRESHOLD_ pinned at 1 MiB (what `care-ray finetune` sets on CPU
workers: `cpu_mmap_threshold_kib`). The two run side by side, one core each, same lengths.

    .venv/bin/python benchmarks/cpu_allocator.py [--steps 8] [--threshold-kib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import workdir

STEPS = r"""
import json, random, resource, sys, time
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = get_peft_model(
    model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
rng = random.Random(0)
tokens, started = 0, None
for step in range(int(sys.argv[2])):
    if step == 1:  # the first step warms up: timed from the second on
        started, tokens = time.perf_counter(), 0
    n = rng.randint(900, 2300)
    ids = torch.randint(0, 40000, (1, n))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    tokens += n
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"peak_gib": round(peak, 2), "tokens_per_s": tokens / (time.perf_counter() - started)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threshold-kib", type=int, default=1024)
    ap.add_argument("--model", type=Path, default=workdir() / "smollm2")
    a = ap.parse_args()
    if not (a.model / "model.safetensors").exists():
        subprocess.check_call(
            [sys.executable, "-m", "care_ray", "import-model", "--smollm2", "--out", str(a.model)]
        )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    variants = {
        "glibc default": env,
        f"pinned at {a.threshold_kib} KiB": {
            **env,
            "MALLOC_MMAP_THRESHOLD_": str(a.threshold_kib * 1024),
        },
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", STEPS, str(a.model), str(a.steps)],
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for name, e in variants.items()
    }
    results = {
        name: json.loads(p.communicate()[0].strip().splitlines()[-1]) for name, p in procs.items()
    }
    (base, pinned) = results.values()
    for name, r in results.items():
        print(f"{name}: peak RSS {r['peak_gib']} GiB, {r['tokens_per_s']:.1f} tokens/s")
    print(
        f"pinned / default: peak {pinned['peak_gib'] / base['peak_gib']:.2f}, "
        f"tokens/s {pinned['tokens_per_s'] / base['tokens_per_s']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
