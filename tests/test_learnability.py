"""The method end to end: a signal planted in a corpus is learned by `care-ray finetune` (Ray Train)
and scored back by `care-ray score` (vLLM, guided decoding) with the held-out r training reported.

The corpus (written here) has 160 short sessions, one client each. The client's last turn is one of
two planted sentences, and the client's own WAI-SR ratings follow it: GRATEFUL → every item 4 or 5,
DISMISSIVE → 1 or 2; nothing else in a session tells them apart. `sft-data --items goal --folds 2`
makes 4 examples per session; fold 0 (80 sessions) is held out. The random tiny Llama knows nothing
(its held-out r is undefined or ≈ 0), so a held-out r near the ceiling the rating noise allows
(0.986) means the pipeline learned the signal, and the same r from `care-ray score` means that the
selected checkpoint, the prompts and the score tokens survived the trip to serving. Two variants,
both through the CLI with `--set`/`--out` overrides of configs/finetune-tiny-cpu.yaml:
full fine-tuning with score+rationale targets (the paper's recipe), and LoRA with score-only
targets (the ablation) served as an adapter.

What turns it red (temporary mutations, run on 2026-11-30 in a copy of the tree, then discarded):
- SFT target shifted by one token (care_ray/training/loop.py `collate`: labels written one position
  late, `labels[i, len(e.prompt_ids) + 1 : len(s) + 1]`): the full variant predicted one constant
  score at every checkpoint (held-out r undefined, selection score -2.0), so
  `best >= MIN_HELDOUT_R` failed; test_the_loss_sees_exactly_the_target_tokens failed too.
- Scoring prompt one token off the training prompt (care_ray/scoring/prompts.py `render_items` and
  `_suffix_ids`: a space before the item text): the learned score survived it (scored r 0.985 vs
  0.985 at training, 99.4% of item scores equal), so r alone would not notice; the prompt
  identity checks did: test_scoring_sends_the_token_ids_training_learned_from (320 of 320 prompts
  differ) and the prompt-token check of the end-to-end test failed. test_a_drifted_scoring_prompt_is_caught
  keeps showing that the identity check bites.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from scipy.stats import pearsonr
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.contracts.rubric import load_rubric
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer
from care_ray.training.loop import collate, encode_examples, score_digit_ids
from care_ray.training.sft_data import iter_fold, read_examples

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "finetune-tiny-cpu.yaml"
runner = CliRunner()

GRATEFUL = "Thank you so much, talking with you really helped me today."
DISMISSIVE = "Honestly this was a waste of my time and you did not listen."
CLIENT_LINES = [
    "I have been feeling stressed about work lately.",
    "My sister and I keep arguing about money.",
    "I cannot sleep well since I moved to the new city.",
    "My exams are coming up and I feel lost.",
    "I miss my friends and I feel lonely most evenings.",
    "My boss gives me more tasks every week.",
    "I worry a lot about my health these days.",
    "My partner and I do not talk much anymore.",
]
COUNSELOR_LINES = [
    "That sounds hard. Can you tell me more about it?",
    "How long have you been feeling this way?",
    "What have you tried so far?",
    "It makes sense that you feel that way.",
    "What would a small first step look like for you?",
    "Who do you usually talk to when this happens?",
]
N_SESSIONS = 160
ITEMS = "goal"
HELD_OUT = 0
ALIGN = 32  # the score-only variant's prefix alignment (sft-data and score --align-prefix-blocks)
MAX_MODEL_LEN = 1024  # sft-data cuts transcripts by scoring's budget; score runs with the same
MAX_NEW_TOKENS = 160
MIN_HELDOUT_R = (
    0.9  # the ceiling is 0.986: the group explains the ratings up to their 1-point noise
)
MAX_R_GAP = 0.05  # scored r vs the selected checkpoint's held-out r
MIN_SCORE_AGREEMENT = 0.95  # items where vLLM's guided greedy score = training's first-digit argmax

# The two variants: (method, target) → `--set` overrides of configs/finetune-tiny-cpu.yaml. Every
# 20 optimizer steps a checkpoint is evaluated (4 in all) and kept, so selection has a choice.
VARIANTS = {
    ("full", "score+rationale"): ["method=full", "learning_rate=3e-3"],
    ("lora", "score"): [],  # the config's LoRA r=8, lr 1e-2
}
COMMON_SETS = [
    "folds=[0]",
    "epochs=2",
    "eval_every_steps=20",
    "num_to_keep=4",
    "max_train_examples=null",
    "max_eval_examples=null",
]


def planted_sessions(n: int, seed: int = 0) -> list[dict]:
    """Sessions whose client ratings follow one planted sentence and nothing else."""
    rng = random.Random(seed)
    sessions = []
    for i in range(n):
        grateful = i % 2 == 0
        turns = []
        for _ in range(rng.randint(2, 3)):
            turns += [
                {"role": "client", "text": rng.choice(CLIENT_LINES)},
                {"role": "counselor", "text": rng.choice(COUNSELOR_LINES)},
            ]
        turns += [
            {"role": "client", "text": GRATEFUL if grateful else DISMISSIVE},
            {"role": "counselor", "text": "Let us meet again next week."},
        ]
        wai = [rng.choice([4, 5]) if grateful else rng.choice([1, 2]) for _ in range(12)]
        sessions.append(
            {
                "session_id": f"p{i:03d}",
                "client_id": f"c{i:03d}",
                "language": "en",
                "source": "planted",
                "turns": turns,
                "client_wai": wai,
            }
        )
    return sessions


def _write_corpus(sessions: list[dict], folder: Path) -> Path:
    from care_ray.corpus.ingest import ingest_files

    folder.mkdir(parents=True)
    lines = folder / "sessions.jsonl"
    lines.write_text("".join(json.dumps(s) + "\n" for s in sessions), encoding="utf-8")
    ingest_files("sessions-jsonl", [lines], folder / "corpus")
    return folder / "corpus"


def _invoke(args: list) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (
        f"care-ray {args[0]} exited {result.exit_code}: {result.output[-3000:]}\n{result.exception!r}"
    )
    return result.output


@pytest.fixture(scope="module")
def planted(tiny_model, tmp_path_factory):
    """The corpus, its SFT data for both target modes, and a corpus of the held-out fold alone."""
    work = tmp_path_factory.mktemp("learnability")
    sessions = planted_sessions(N_SESSIONS)
    corpus = _write_corpus(sessions, work / "all")
    data = {}
    for target in ("score+rationale", "score"):
        data[target] = work / f"sft-{target}"
        _invoke(
            [
                "sft-data",
                "--sessions",
                corpus,
                "--out",
                data[target],
                "--target",
                target,
                "--folds",
                2,
                "--items",
                ITEMS,
                "--model",
                tiny_model,
                "--max-model-len",
                MAX_MODEL_LEN,
                "--max-new-tokens",
                MAX_NEW_TOKENS,
                # the planted corpus has ratings only: a fixed sentence is the rationale
                "--missing-rationale",
                "template",
                # the score-only variant trains on block-aligned prompts and is scored with them
                *(["--align-prefix-blocks", ALIGN] if target == "score" else []),
            ]
        )
    held_ids = {
        r["session_id"] for r in iter_fold(read_examples(data["score"]), HELD_OUT, held_out=True)
    }
    assert held_ids == {
        r["session_id"]
        for r in iter_fold(read_examples(data["score+rationale"]), HELD_OUT, held_out=True)
    }
    held_out = [s for s in sessions if s["session_id"] in held_ids]
    assert abs(len(held_out) - N_SESSIONS // 2) <= 8 and {
        s["turns"][-2]["text"] for s in held_out
    } == {GRATEFUL, DISMISSIVE}
    return {
        "work": work,
        "data": data,
        "sessions": {s["session_id"]: s for s in sessions},
        "held_out": _write_corpus(held_out, work / "held-out"),
    }


def training_prompt_ids(data: Path, tokenizer) -> dict[tuple[str, int], list[int]]:
    """(session, item) → the prompt token ids the trainer trains on for the held-out fold (as
    train_loop_per_worker encodes them: the example's messages through PromptBuilder.render)."""
    rows = list(iter_fold(read_examples(data), HELD_OUT, held_out=True))
    encoded, dropped = encode_examples(
        rows, tokenizer, PromptBuilder(load_rubric(), tokenizer).render, max_seq_len=10**6
    )
    assert dropped == 0
    return {(e.session_id, e.item_id): e.prompt_ids for e in encoded}


def scoring_prompt_ids(corpus: Path, score_config) -> dict[tuple[str, int], list[int]]:
    """(session, item) → the token ids `care-ray score` gives the engine (its prompt stage, run here)."""
    from care_ray.contracts.rubric import rubric_for_language
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.stages import BuildItemPrompts

    item_ids = [
        i.id
        for i in rubric_for_language(None, score_config.rubric, score_config.language).select(
            score_config.items
        )
    ]
    sessions = sessions_dataset(corpus).to_table(columns=["session_id", "turns", "language"])
    prompts = BuildItemPrompts(score_config, item_ids, None)(
        sessions
    )  # no resume plan: every item of every session
    keys = zip(
        prompts.column("session_id").to_pylist(), prompts.column("item_id").to_pylist(), strict=True
    )
    return dict(zip(keys, prompts.column("prompt_token_ids").to_pylist(), strict=True))


def _score_config(planted, tiny_model, **kw):
    from care_ray.scoring.config import ScoreConfig

    return ScoreConfig(
        sessions=planted["held_out"],
        model=str(tiny_model),
        out=planted["work"] / "unused",
        items=ITEMS,
        max_model_len=MAX_MODEL_LEN,
        max_new_tokens=MAX_NEW_TOKENS,
        **kw,
    )


def _goal_truth(session: dict) -> float:
    return float(np.mean([session["client_wai"][i.id - 1] for i in load_rubric().select(ITEMS)]))


# ------------------------------------------------------------------ the guards that need no engine


@pytest.mark.parametrize("target", ["score+rationale", "score"])
def test_scoring_sends_the_token_ids_training_learned_from(planted, tiny_model, target):
    tok = load_tokenizer(str(tiny_model))
    trained = training_prompt_ids(planted["data"][target], tok)
    # the score-only data was built with --align-prefix-blocks: scoring aligns the same way
    layout = dict(align_prefix_blocks=True, block_size=ALIGN) if target == "score" else {}
    scored = scoring_prompt_ids(
        planted["held_out"],
        _score_config(planted, tiny_model, score_only=target == "score", **layout),
    )
    assert set(scored) == set(trained) and len(trained) == 4 * len({s for s, _ in trained})
    differing = [k for k in trained if scored[k] != trained[k]]
    assert not differing, (
        f"{len(differing)} of {len(trained)} scoring prompts differ from the training prompt, e.g. {differing[0]}"
    )


def test_a_drifted_scoring_prompt_is_caught(planted, tiny_model, tmp_path):
    """The identity check bites: a rubric whose question differs by one word gives other ids."""
    text = (REPO / "schemas" / "rubrics" / "wai-sr-client.en.yaml").read_text(encoding="utf-8")
    assert "Rate how often" in text
    drifted = tmp_path / "drifted.yaml"
    drifted.write_text(text.replace("Rate how often", "Rate how frequently"), encoding="utf-8")
    trained = training_prompt_ids(planted["data"]["score"], load_tokenizer(str(tiny_model)))
    scored = scoring_prompt_ids(
        planted["held_out"],
        _score_config(
            planted, tiny_model, rubric=drifted, align_prefix_blocks=True, block_size=ALIGN
        ),
    )
    assert set(scored) == set(trained) and all(scored[k] != trained[k] for k in trained)


def test_the_loss_sees_exactly_the_target_tokens(planted, tiny_model):
    """Training-side alignment: labels are the target ids at the target positions (transformers
    shifts them by one itself), -100 elsewhere, and the label after `{"score":` is the score digit."""
    tok = load_tokenizer(str(tiny_model))
    prefix, digits = score_digit_ids(tok)
    rows = list(
        iter_fold(read_examples(planted["data"]["score+rationale"]), HELD_OUT, held_out=False)
    )[:6]
    encoded, _ = encode_examples(
        rows, tok, PromptBuilder(load_rubric(), tok).render, max_seq_len=10**6
    )
    batch = collate(encoded, tok.pad_token_id)
    for i, e in enumerate(encoded):
        start, end = len(e.prompt_ids), len(e.prompt_ids) + len(e.target_ids)
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert torch.equal(labels[start:end], torch.tensor(e.target_ids)) and torch.equal(
            ids[start:end], labels[start:end]
        )
        assert bool((labels[:start] == -100).all()) and bool((labels[end:] == -100).all())
        assert int(labels[start + len(prefix)]) == digits[e.score - 1]
        assert int(batch["attention_mask"][i].sum()) == end


# ------------------------------------------------------------------ --set / --out


def test_set_overrides_are_typed_merged_and_validated(tmp_path):
    from care_ray.common.errors import UserError
    from care_ray.common.options import parse_overrides
    from care_ray.training.config import ConfigError, load_finetune_config, out_overrides

    overrides = parse_overrides(
        ["lora.r=32", "folds=[0]", "max_train_examples=null", "learning_rate=3e-3", "name=run a"]
    )
    assert {k: overrides[k] for k in ("lora.r", "folds", "max_train_examples", "name")} == {
        "lora.r": 32,
        "folds": [0],
        "max_train_examples": None,
        "name": "run a",
    }
    cfg = load_finetune_config(CONFIG, {**overrides, **out_overrides(tmp_path / "run")})
    base = load_finetune_config(CONFIG)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (
        32,
        base.lora.alpha,
        base.lora.target_modules,
    )  # merged, not replaced
    assert (cfg.folds, cfg.max_train_examples, cfg.learning_rate, cfg.name) == (
        [0],
        None,
        3e-3,
        "run a",
    )
    assert (
        Path(cfg.output_dir) == tmp_path / "run"
        and Path(cfg.storage_path) == tmp_path / "run" / "ray-results"
    )
    merged = load_finetune_config(CONFIG, parse_overrides(["lora={r: 4, dropout: 0.1}"]))
    assert (merged.lora.r, merged.lora.dropout, merged.lora.alpha) == (
        4,
        0.1,
        base.lora.alpha,
    )  # a mapping merges into its group
    for bad in (["lora"], ["=1"], ["lora..r=1"], ["folds=[0"]):
        with pytest.raises(UserError, match="--set"):
            parse_overrides(bad)
    with pytest.raises(ConfigError, match=r"epochs is 2, not a group of settings"):
        load_finetune_config(CONFIG, parse_overrides(["epochs.x=1"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "lora.rank=32"], "unknown key 'lora.rank' in --set (did you mean 'lora.r'?)"),
        (["--set", "lora.r=0"], "lora.r (--set): Input should be greater than or equal to 1"),
        (["--set", "method=qlora"], "method (--set): Input should be 'lora' or 'full'"),
        (["--set", "effective_batch_size=6"], "not a multiple of micro_batch_size"),
        (
            ["--set", "folds=[7]", "--set", "model={model}", "--set", "data={data}"],
            "folds [7] are not in",
        ),
        (["--out", "x", "--set", "storage_path=y"], "--out sets output_dir and storage_path"),
        (["--set", "lora.r"], "--set takes KEY=VALUE"),
    ],
)
def test_finetune_rejects_bad_overrides_in_one_line_before_ray_starts(
    planted, tiny_model, args, message
):
    args = [a.format(model=tiny_model, data=planted["data"]["score"]) for a in args]
    result = runner.invoke(app, ["finetune", "--config", str(CONFIG), *args])
    assert result.exit_code == 2, result.output
    assert (
        message in result.output
        and len(result.output.strip().splitlines()) == 1
        and "Traceback" not in result.output
    )


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "target"), list(VARIANTS), ids=[f"{m}-{t}" for m, t in VARIANTS]
)
def test_a_planted_signal_is_learned_and_scored_back(planted, tiny_model, method, target):
    run = planted["work"] / f"{method}-{target}"
    sets = [
        f"name=learn-{method}-{target.replace('+', '-')}",
        f"model={tiny_model}",
        f"data={planted['data'][target]}",
        *COMMON_SETS,
        *VARIANTS[method, target],
    ]
    _invoke(
        ["finetune", "--config", CONFIG, "--out", run, *(a for s in sets for a in ("--set", s))]
    )
    assert (run / "summary.json").exists() and (
        run / "ray-results" / f"learn-{method}-{target.replace('+', '-')}-fold0"
    ).is_dir()  # --out

    # training: the selected checkpoint is the best of every evaluation, and it learned the signal
    record = json.loads((run / "fold0" / "metrics.json").read_text())
    assert (
        record["method"] == method
        and record["target"] == target
        and record["proxy_labels"] is False
    )
    candidates = record["candidates"]
    assert sorted(c["step"] for c in candidates) == [20, 40, 60, 80]
    best = record["metrics"][
        "heldout_selection_score"
    ]  # -2.0: r undefined (a constant prediction) at every checkpoint
    curve = sorted((c["step"], round(c["heldout_selection_score"], 3)) for c in candidates)
    assert best >= MIN_HELDOUT_R, (
        f"held-out r {best:.3f}: the planted signal was not learned (step, r): {curve}"
    )
    assert (
        best
        == max(c["heldout_selection_score"] for c in candidates)
        == record["metrics"]["heldout_expected_pearson_goal"]  # selected on the expected score
    )
    served = Path(record["model"] if method == "full" else record["adapter"])
    heldout = json.loads((served / "heldout.json").read_text())
    assert (
        heldout["metrics"]["step"] == record["metrics"]["step"]
    )  # the exported folder is the selected checkpoint
    trained_scores = {(row[0], row[1]): row[4][0] for row in heldout["predictions"]}

    # scoring: the selected model (full) or the base + adapter (LoRA) through vLLM, guided decoding
    scores = run / "scores"
    model_args = (
        ["--model", served] if method == "full" else ["--model", tiny_model, "--adapter", served]
    )
    _invoke(
        [
            "score",
            "--sessions",
            planted["held_out"],
            *model_args,
            "--out",
            scores,
            "--items",
            ITEMS,
            "--max-model-len",
            MAX_MODEL_LEN,
            "--max-new-tokens",
            MAX_NEW_TOKENS,
            "--no-progress",
            "--score-logprobs",
            20,
            *(["--score-only"] if target == "score" else []),
            *(["--align-prefix-blocks", "--block-size", ALIGN] if target == "score" else []),
        ]
    )
    manifest = json.loads((scores / "manifest.json").read_text())
    assert (
        manifest["items_in"] == len(trained_scores)
        and manifest["items_scored"] >= MIN_SCORE_AGREEMENT * manifest["items_in"]
    )
    items = ds.dataset(scores / "items").to_table().to_pylist()
    assert {(r["model"], r["adapter"]) for r in items} == (
        {(str(served), None)} if method == "full" else {(str(tiny_model), str(served))}
    )

    # the same prompts, token for token (lengths as the engine counted them)
    trained_prompts = training_prompt_ids(planted["data"][target], load_tokenizer(str(tiny_model)))
    assert all(
        r["prompt_tokens"] == len(trained_prompts[r["session_id"], r["item_id"]]) for r in items
    )
    # the same scores, item by item: greedy guided decoding writes the first-digit argmax
    agree = np.mean([r["score"] == trained_scores[r["session_id"], r["item_id"]] for r in items])
    assert agree >= MIN_SCORE_AGREEMENT, (
        f"vLLM's score equals the training-time prediction on only {agree:.0%} of items"
    )
    # and the same r, computed here from the client's own ratings
    sessions = ds.dataset(scores / "sessions").to_table(columns=["session_id", "goal"]).to_pylist()
    scored_r = pearsonr(
        [s["goal"] for s in sessions],
        [_goal_truth(planted["sessions"][s["session_id"]]) for s in sessions],
    ).statistic
    assert abs(scored_r - best) <= MAX_R_GAP, (
        f"scored r {scored_r:.3f} vs held-out r {best:.3f} at training time"
    )
    # the expected score (Σ s·p(s) at the score token) beside the decoded one, same sessions
    expected = ds.dataset(scores / "sessions").to_table(columns=["session_id", "goal_expected"])
    expected_r = pearsonr(
        expected.column("goal_expected").to_pylist(),
        [_goal_truth(planted["sessions"][s]) for s in expected.column("session_id").to_pylist()],
    ).statistic
    print(f"{method}-{target}: held-out r greedy {scored_r:.3f}, expected {expected_r:.3f}")
    assert expected_r >= MIN_HELDOUT_R - 0.1, (scored_r, expected_r)

    # a fine-tuned model is scored with the prompt layout it trained on, and refused with the other
    # (the full model, trained without padding, scored its held-out fold at r = 0.00 with it)
    aligned = ["--align-prefix-blocks", "--block-size", str(ALIGN)]
    refused = CliRunner().invoke(
        app,
        [
            "score", "--sessions", str(planted["held_out"]), *map(str, model_args),
            "--out", str(run / "scores-other-layout"), *([] if target == "score" else aligned),
        ],
    )  # fmt: skip
    assert refused.exit_code == 2 and "fine-tuned by care-ray" in refused.output
    assert not (run / "scores-other-layout").exists()
