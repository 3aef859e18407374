"""The tiny Llama: builds fast, is a real Llama checkpoint in safetensors, generates with
transformers (vLLM generation is exercised by every test in test_scoring.py)."""

import json
import time

from typer.testing import CliRunner

from care_ray.cli import app


def test_builds_in_under_a_minute_and_generates_with_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.time()
    result = CliRunner().invoke(app, ["tiny-model", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert time.time() - t < 60
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["head_dim"] >= 32
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", use_safetensors=True)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    msgs = [
        {"role": "system", "content": "你是来访者。"},
        {"role": "user", "content": "How did the session feel?"},
    ]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    text = tok.decode(enc["input_ids"][0])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system") and text.endswith(
        "assistant<|end_header_id|>\n\n"
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 8 or out[0, -1].item() == tok.eos_token_id
    # Chinese round-trips through the locally trained byte-level tokenizer
    assert (
        tok.decode(tok("我感到咨询师关心我", add_special_tokens=False)["input_ids"])
        == "我感到咨询师关心我"
    )
