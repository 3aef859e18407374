import os

import pyarrow as pa
import pytest

from care_ray.contracts.rubric import load_rubric
from care_ray.contracts.session import sessions_to_table
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer


def session(n_turns=6, words=5, sid="s1"):
    turns = [
        {
            "role": "client" if i % 2 == 0 else "counselor",
            "text": f"turn{i} " + " ".join(["word"] * words),
        }
        for i in range(n_turns)
    ]
    return {"session_id": sid, "client_id": "c", "language": "en", "source": "t", "turns": turns}


def test_twelve_prompts_share_the_transcript_prefix_and_end_with_the_item(tiny_model):
    rubric = load_rubric()
    b = PromptBuilder(
        rubric, load_tokenizer(str(tiny_model)), max_model_len=2048, max_new_tokens=256
    )
    table = b.build_item_prompts(sessions_to_table([session()]), rubric.items)
    prompts = table.column("prompt").to_pylist()
    assert len(prompts) == 12 and table.column("item_id").to_pylist() == list(range(1, 13))
    prefix = os.path.commonprefix(prompts)
    assert "turn5 word" in prefix  # the whole transcript is inside the shared prefix
    for item, p in zip(rubric.items, prompts, strict=True):
        assert item.text not in prefix
        assert p.index(item.text) > p.index("turn5")  # item last
        assert p == b.render(b.messages(b.transcript(session()["turns"]).text, item))


def test_long_sessions_keep_opening_and_recent_turns_within_budget(tiny_model):
    rubric = load_rubric()
    tok = load_tokenizer(str(tiny_model))
    b = PromptBuilder(rubric, tok, max_model_len=600, max_new_tokens=100)
    s = session(n_turns=80, words=12)
    table = b.build_item_prompts(sessions_to_table([s]), rubric.items[:2])
    row = table.slice(0, 1).to_pylist()[0]
    assert row["truncated"] and row["n_turns"] == 80 and 0 < row["n_elided_turns"] < 80
    assert (
        "turn0 " in row["prompt"] and "turn79 " in row["prompt"] and "turn40 " not in row["prompt"]
    )
    assert f"[... {row['n_elided_turns']} turns omitted ...]" in row["prompt"]
    assert len(tok(row["prompt"], add_special_tokens=False)["input_ids"]) <= 600 - 100
    short = b.build_item_prompts(sessions_to_table([session()]), rubric.items[:1]).to_pylist()[0]
    assert not short["truncated"] and short["n_elided_turns"] == 0


def test_chinese_rubric_and_item_selection(tiny_model):
    zh = load_rubric(language="zh")
    assert zh.language == "zh" and len(zh.items) == 12
    assert [i.id for i in zh.select("bond")] == [3, 5, 7, 9]
    assert [i.id for i in zh.select("1,task")] == [1, 2, 10, 12]
    b = PromptBuilder(zh, load_tokenizer(str(tiny_model)))
    s = {
        "session_id": "z",
        "client_id": "c",
        "language": "zh",
        "source": "t",
        "turns": [
            {"role": "client", "text": "我最近很焦虑。"},
            {"role": "counselor", "text": "能多说一点吗？"},
        ],
    }
    p = b.build_item_prompts(sessions_to_table([s]), zh.select("3")).column("prompt")[0].as_py()
    assert "来访者（你）: 我最近很焦虑。" in p and zh.item(3).text in p
    with pytest.raises(ValueError, match="neither a dimension"):
        zh.select("rapport")


def test_budget_too_small_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="max_model_len"):
        PromptBuilder(
            load_rubric(), load_tokenizer(str(tiny_model)), max_model_len=256, max_new_tokens=200
        )


def test_prompt_table_schema(tiny_model):
    rubric = load_rubric()
    t = PromptBuilder(rubric, load_tokenizer(str(tiny_model))).build_item_prompts(
        sessions_to_table([session()]), rubric.items
    )
    assert t.schema.field("truncated").type == pa.bool_()


def test_token_ids_equal_tokenising_each_prompt_whole(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    for lang in ("en", "zh"):
        rubric = load_rubric(language=lang)
        b = PromptBuilder(rubric, tok, max_model_len=2048, max_new_tokens=128)
        sessions = [session(sid=f"s{k}", n_turns=4 + k) for k in range(3)] + [
            {
                "session_id": "z",
                "client_id": "c",
                "language": "zh",
                "source": "t",
                "turns": [
                    {"role": "client", "text": "我最近很焦虑，睡不好。"},
                    {"role": "counselor", "text": "能多说一点吗？"},
                ],
            }
        ]
        t = b.build_item_prompts(sessions_to_table(sessions), rubric.items)
        for prompt, ids in zip(
            t.column("prompt").to_pylist(), t.column("prompt_token_ids").to_pylist(), strict=True
        ):
            assert ids == tok(prompt, add_special_tokens=False)["input_ids"]
        assert b._pieces_safe  # the fast path held for this tokenizer


@pytest.mark.parametrize("block", [16, 32, 128])
def test_aligned_prompts_share_whole_kv_blocks_and_differ_only_by_newline_tokens(tiny_model, block):
    rubric = load_rubric()
    tok = load_tokenizer(str(tiny_model))
    plain = PromptBuilder(rubric, tok, max_model_len=2048, max_new_tokens=256)
    aligned = PromptBuilder(rubric, tok, max_model_len=2048, max_new_tokens=256, align_to=block)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    pads = set()
    for n_turns in range(3, 13):
        turns = session(n_turns=n_turns, words=n_turns)["turns"]
        _, texts, ids = aligned.item_prompts(turns, rubric.items)
        _, plain_texts, plain_ids = plain.item_prompts(turns, rubric.items)
        shared = len(os.path.commonprefix(ids))
        unshared = len(os.path.commonprefix(plain_ids))
        pad = len(ids[0]) - len(plain_ids[0])
        pads.add(pad)
        assert 0 <= pad < block and shared == unshared + pad
        # what the items share ends on a block boundary: a prefix cache keeps all of it
        assert shared % block == 0 and all(len(x) > shared for x in ids)
        assert all(len(x) - len(y) == pad for x, y in zip(ids, plain_ids, strict=True))
        # the padding is newline tokens right after the transcript, nothing else moves
        cut = len(os.path.commonprefix([ids[0], plain_ids[0]]))
        assert ids[0][cut : cut + pad] == newline * pad
        assert ids[0][:cut] + ids[0][cut + pad :] == plain_ids[0]
        at = len(os.path.commonprefix([texts[0], plain_texts[0]]))
        assert texts[0][at : at + pad] == "\n" * pad
        assert texts[0][:at] + texts[0][at + pad :] == plain_texts[0]
    assert len(pads) > 1  # sessions of different lengths get different padding
    # the padding comes out of the transcript's budget, never past the context
    assert aligned.budget == plain.budget - (block - 1)


def _blank_line_tokenizer():
    """A byte-level BPE that learned a token for a blank line, as SmolLM2's did: the header's
    closing "\\n\\n" is one token alone but two before the transcript's first word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from care_ray.models.tiny import LLAMA3_CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [load_rubric().prompt.model_dump_json(), *[":\n\n" + "a line\n\n" * 50] * 20]
    tok.train_from_iterator(
        text,
        trainer=trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )


def test_a_header_that_merges_into_the_transcript_is_tokenised_with_it_and_still_aligned():
    rubric = load_rubric()
    tok = _blank_line_tokenizer()
    plain = PromptBuilder(rubric, tok, max_model_len=4096, max_new_tokens=64)
    header = plain._parts[0]
    turns = session(n_turns=6)["turns"]
    _, texts, ids = plain.item_prompts(turns, rubric.items)
    # the header alone does not tokenise as it does before the transcript ...
    assert (
        tok(header, add_special_tokens=False)["input_ids"]
        != (
            tok(header + texts[0][len(header) :], add_special_tokens=False)["input_ids"][
                : len(tok(header, add_special_tokens=False)["input_ids"])
            ]
        )
    )
    # ... so header and transcript are tokenised together, and every prompt's ids stay exact
    assert plain._header_merges and plain._pieces_safe
    assert ids == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    aligned = PromptBuilder(rubric, tok, max_model_len=4096, max_new_tokens=64, align_to=32)
    _, _, aligned_ids = aligned.item_prompts(turns, rubric.items)
    shared = len(os.path.commonprefix(aligned_ids))
    assert shared % 32 == 0 and shared >= len(os.path.commonprefix(ids))


def test_alignment_that_cannot_apply_is_refused_in_one_line(tiny_model):
    import copy

    from care_ray.common.errors import UserError

    tok = copy.deepcopy(load_tokenizer(str(tiny_model)))
    # a template that rewrites the content: no piece of the prompt is shared text any more
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}"
    rubric = load_rubric()
    turns = session(n_turns=4)["turns"]
    plain = PromptBuilder(rubric, tok, max_model_len=4096, max_new_tokens=64)
    assert len(plain.item_prompts(turns, rubric.items)[2]) == 12  # fine without the option
    aligned = PromptBuilder(rubric, tok, max_model_len=4096, max_new_tokens=64, align_to=32)
    with pytest.raises(UserError, match="^--align-prefix-blocks: this model's chat template"):
        aligned.item_prompts(turns, rubric.items)
