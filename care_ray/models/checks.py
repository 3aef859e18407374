"""Model and adapter folders are checked before anything starts.

care-ray loads local safetensors only. A path that is not a usable folder fails in one line that
says what is missing and what to do — within a second, before Ray or an engine starts — instead of
a transformers traceback 20-40 s later from inside an actor. (That nothing reaches a hub is
care_ray.cluster.offline's job.)"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from care_ray.common.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
MAX_LORA_RANK = 512  # the largest rank vLLM serves


class ModelPathError(UserError):
    """A --model or --adapter that cannot be used, said in one line."""


def _not_a_folder(option: str, path: str) -> ModelPathError:
    if _HUB_ID.match(path) and not Path(path).exists():
        return ModelPathError(
            f"{option} {path} looks like a model hub id, and care-ray never downloads weights: "
            "download them once with the hub's own "
            f"tool (e.g. `huggingface-cli download {path} --local-dir DIR`) and pass {option} DIR"
        )
    if Path(path).is_file():
        return ModelPathError(f"{option} {path} is a file; pass the folder that holds it")
    return ModelPathError(f"{option} {path}: no such folder")


def _weights(root: Path, option: str) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (root / s).exists()]
        if missing:
            raise ModelPathError(
                f"{option} {root}: {len(missing)} weight shard(s) named in "
                f"model.safetensors.index.json are missing, e.g. {missing[0]}"
            )
        return [root / s for s in shards]
    found = sorted(root.glob("*.safetensors"))
    if not found:
        legacy = sorted(
            p.name for p in root.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")
        )
        if legacy:
            raise ModelPathError(
                f"{option} {root} has only pickled weights ({legacy[0]}); care-ray loads "
                "safetensors only: convert them "
                "(e.g. load and save_pretrained(safe_serialization=True)) and pass the converted folder"
            )
        raise ModelPathError(f"{option} {root} has no safetensors weights (*.safetensors)")
    return found


def _has_chat_template(root: Path) -> bool:
    if (root / "chat_template.jinja").exists() or (root / "chat_template.json").exists():
        return True
    cfg = root / "tokenizer_config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))


def check_model_folder(
    path: str | os.PathLike, option: str = "--model", need_weights: bool = True
) -> Path:
    """A local model folder with config.json, safetensors weights, a tokenizer and a chat
    template (care-ray's prompts are chats), or ModelPathError. `need_weights=False` for commands
    that use only the tokenizer (sft-data's token budget)."""
    text = str(path)
    root = Path(text)
    if not root.is_dir():
        raise _not_a_folder(option, text)
    if need_weights:
        if not (root / "config.json").exists():
            raise ModelPathError(
                f"{option} {root} has no config.json: not a transformers model folder"
            )
        _weights(root, option)
    if not any((root / f).exists() for f in _TOKENIZER_FILES):
        raise ModelPathError(
            f"{option} {root} has no tokenizer (tokenizer.json): save the model's tokenizer into the folder"
        )
    if not _has_chat_template(root):
        raise ModelPathError(
            f"{option} {root} has no chat template (tokenizer_config.json 'chat_template' or chat_template.jinja): "
            "care-ray's prompts are chats, so use an instruct/chat model or add its template"
        )
    return root


def weight_names(model: Path) -> set[str]:
    """Tensor names of a model folder, read from the safetensors headers alone (no weights loaded)."""
    names: set[str] = set()
    for shard in _weights(model, "--model"):
        with shard.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            names |= {k for k in json.loads(f.read(n)) if k != "__metadata__"}
    return names


def check_adapter_folder(
    path: str | os.PathLike, model: str | os.PathLike | None = None, max_rank: int = MAX_LORA_RANK
) -> Path:
    """A PEFT LoRA folder with adapter_config.json and safetensors weights whose rank the engine
    serves and whose target modules exist in the base model, or ModelPathError."""
    text = str(path)
    root = Path(text)
    if not root.is_dir():
        raise _not_a_folder("--adapter", text)
    cfg_file = root / "adapter_config.json"
    if not cfg_file.exists():
        raise ModelPathError(
            f"--adapter {root} has no adapter_config.json: not a PEFT adapter folder (a "
            "fine-tuned model folder goes in --model)"
        )
    if not (root / "adapter_model.safetensors").exists():
        legacy = (root / "adapter_model.bin").exists()
        raise ModelPathError(
            f"--adapter {root} has no adapter_model.safetensors"
            + (
                "; care-ray loads safetensors only: re-save it with safe_serialization=True"
                if legacy
                else ""
            )
        )
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ModelPathError(
            f"--adapter {root} is a {cfg.get('peft_type')} adapter; the engines serve LoRA adapters only"
        )
    rank = int(cfg.get("r", 8))
    if rank > max_rank:
        raise ModelPathError(
            f"--adapter {root} has rank {rank}; the engine serves LoRA ranks up to {max_rank}"
        )
    targets = cfg.get("target_modules")
    if model is not None and isinstance(targets, list) and Path(model).is_dir():
        present = {part for name in weight_names(Path(model)) for part in name.split(".")}
        absent = sorted(t for t in targets if t not in present)
        if absent:
            raise ModelPathError(
                f"--adapter {root} targets modules the base model {model} does not have: "
                f"{', '.join(absent)} (an adapter for another architecture?)"
            )
    return root
