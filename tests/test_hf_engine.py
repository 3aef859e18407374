"""The transformers fallback engine: shared-prefix reuse, token-budget batching and the JSON stop
keep greedy outputs identical to a plain generate() per prompt."""

from __future__ import annotations

import pytest

from care_ray.scoring.engines import EngineConfig
from care_ray.scoring.engines.hf import HFEngine, JsonObjectEnd, group_by_prefix


def test_json_object_end_counts_braces_outside_strings_only():
    def ends_at(text: str) -> int | None:
        scan = JsonObjectEnd()
        for i, ch in enumerate(text):
            if scan.feed(ch):
                return i
        return None

    assert ends_at('{"score": 3, "why": "x"} trailing') == len('{"score": 3, "why": "x"}') - 1
    assert ends_at('Sure: {"a": {"b": [1, {}]}}!') == len('Sure: {"a": {"b": [1, {}]}}') - 1
    assert ends_at('{"a": "} and {"') is None  # braces inside a string
    assert ends_at('{"a": "\\"}"}') == len('{"a": "\\"}"}') - 1  # an escaped quote
    assert ends_at('{"a": "\\\\"}') == len('{"a": "\\\\"}') - 1  # an escaped backslash
    assert ends_at('say "}" then {"a": 1}') == len('say "}" then {"a": 1}') - 1  # prose quotes
    assert ends_at('{"a": 1') is None
    scan = JsonObjectEnd()  # pieces of several characters, as tokens decode
    assert [scan.feed(p) for p in ['{"a', '": "}', '"}\n', "x"]] == [False, False, True, False]


def test_group_by_prefix_splits_sessions_not_the_shared_header():
    header = list(range(1000, 1040))
    sessions = [header + list(range(s * 100, s * 100 + 90)) for s in (1, 2)]
    prompts = [t + [7, 8 + item] for item in range(3) for t in sessions]  # interleaved sessions
    prompts.append([5, 6, 7])  # shares nothing
    prompts.append(list(prompts[0]))  # a duplicate keeps one token of its own
    groups = {tuple(sorted(m)): p for p, m in group_by_prefix(prompts)}
    assert groups == {(0, 2, 4, 7): 131, (1, 3, 5): 131, (6,): 0}


@pytest.fixture(scope="module")
def esconv_prompts(esconv_corpus, tiny_model):
    """Item prompts of 2 real sessions (3 items each, transcripts cut to fit 500 tokens) and one
    prompt that shares nothing with them but the chat template's start."""
    from care_ray.contracts.rubric import load_rubric
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

    rubric = load_rubric()
    tok = load_tokenizer(str(tiny_model))
    sessions = sessions_dataset(esconv_corpus).head(2, columns=["session_id", "turns"])
    builder = PromptBuilder(rubric, tok, max_model_len=500, max_new_tokens=16)
    table = builder.build_item_prompts(sessions, rubric.items[:3])
    prompts = table.column("prompt_token_ids").to_pylist()
    text = tok.apply_chat_template([{"role": "user", "content": "hello there"}], tokenize=False)
    return [*prompts, tok.encode(text, add_special_tokens=False)]


def _plain_generate(model, tokenizer, prompts, budgets):
    """The reference: transformers' own greedy generate, one prompt at a time (no padding)."""
    import torch

    out = []
    with torch.no_grad():
        for p, n in zip(prompts, budgets, strict=True):
            ids = torch.tensor([p])
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.append(gen[0, len(p) :].tolist())
    return out


def test_greedy_outputs_equal_plain_generate(esconv_prompts, tiny_model, monkeypatch):
    # interleaved sessions, a lone prompt in the middle, per-prompt budgets
    prompts = esconv_prompts[::2] + esconv_prompts[1::2]
    budgets = [12 if i % 3 else 6 for i in range(len(prompts))]
    engine = HFEngine(EngineConfig(model=str(tiny_model), kind="hf"))
    ref = _plain_generate(engine.model, engine.tokenizer, prompts, budgets)
    # the default budget takes all rows in one batch (prefix-less and prefixed rows together);
    # then ~3 rows per batch split groups across batches, and prefill goes one row at a time
    for max_batch_tokens in (None, 1600):
        if max_batch_tokens:
            engine.max_batch_tokens = max_batch_tokens
            monkeypatch.setattr("care_ray.scoring.engines.hf.PREFILL_CHUNK_TOKENS", 1)
        gens = engine.generate(prompts, budgets)
        assert len(gens) == len(prompts)
        for g, p, r, n in zip(gens, prompts, ref, budgets, strict=True):
            (s,) = g.samples
            # fp32 and the same kernels per row: the reused prefix changes no greedy token
            assert s.text == engine.tokenizer.decode(r, skip_special_tokens=True)
            assert s.output_tokens == len(r)
            assert s.finish_reason == ("length" if len(r) == n else "stop")
            assert g.prompt_tokens == len(p)
    # vLLM's accounting: a session's first prompt computes the shared prefix, later ones reuse it
    cached = [g.cached_tokens for g in gens]
    assert cached[prompts.index(esconv_prompts[-1])] == 0  # the lone prompt
    assert sum(c == 0 for c in cached) == 3  # one per session + the lone prompt
    computed = sum(g.prompt_tokens - (g.cached_tokens or 0) for g in gens)
    assert computed < 0.4 * sum(g.prompt_tokens for g in gens)


def _bigram_model(tiny_model, transitions: dict[int, int]):
    """The tiny Llama with its layers' outputs zeroed and an untied output layer set so that the
    next token is transitions[last token]: a real model whose output is known in advance."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        hidden = model.model.norm(emb)  # what the output layer sees after each token
        head = torch.zeros_like(emb)
        for src, dst in transitions.items():
            head[dst] += 20 * hidden[src] / hidden[src].norm()
        model.lm_head.weight = torch.nn.Parameter(head)
        model.config.tie_word_embeddings = False
    return model


def test_generation_stops_at_the_end_of_the_json_object(tiny_model):
    from care_ray.scoring.prompts import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    ids = {c: tok.convert_tokens_to_ids(tok.tokenize(c))[0] for c in ["{", "}", "X", "Z"]}
    space_quote, space_brace, dot_quote = (
        tok.encode(c, add_special_tokens=False)[0] for c in [' "', " {", '."']
    )
    # X → { "  {."} Z Z …: the brace inside the string does not count, the } after it ends the
    # object; the same model, started from Z, never opens one
    transitions = {
        ids["X"]: ids["{"],
        ids["{"]: space_quote,
        space_quote: space_brace,
        space_brace: dot_quote,
        dot_quote: ids["}"],
        ids["}"]: ids["Z"],
        ids["Z"]: ids["Z"],
    }
    model = _bigram_model(tiny_model, transitions)
    engine = HFEngine(EngineConfig(model=str(tiny_model), kind="hf"), model=model, tokenizer=tok)
    a, b = engine.generate([[0, 11, 12, ids["X"]], [0, 11, 12, ids["Z"]]], 10)
    assert (a.samples[0].text, a.samples[0].finish_reason, a.samples[0].output_tokens) == (
        '{ " {."}',
        "stop",
        5,
    )
    assert (b.samples[0].text, b.samples[0].finish_reason, b.samples[0].output_tokens) == (
        "Z" * 10,
        "length",
        10,
    )


def test_sampling_gives_the_asked_number_of_samples(esconv_prompts, tiny_model):
    cfg = EngineConfig(model=str(tiny_model), kind="hf", temperature=1.0, samples=3, seed=1)
    engine = HFEngine(cfg)
    gens = engine.generate(esconv_prompts[:2], 5)
    assert [len(g.samples) for g in gens] == [3, 3]
    assert all(s.output_tokens <= 5 for g in gens for s in g.samples)
    assert len({s.text for g in gens for s in g.samples}) > 1
