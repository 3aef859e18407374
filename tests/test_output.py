import pytest

from care_ray.contracts.output import (
    InvalidOutput,
    OutputError,
    format_item_output,
    output_schema,
    parse_item_output,
    quote_found_share,
)


def test_round_trip_of_the_training_target():
    text = format_item_output(4, "我觉得咨询师在听我说。", ["能多说一点吗？"])
    assert text.startswith('{"score":4,')
    assert parse_item_output(text) == {
        "score": 4,
        "rationale": "我觉得咨询师在听我说。",
        "quotes": ["能多说一点吗？"],
    }


def test_raw_control_characters_inside_strings_are_tolerated():
    assert parse_item_output('{"score":2,"rationale":"line\tone\x08","quotes":[]}')["score"] == 2


@pytest.mark.parametrize(
    "text, finish, reason",
    [
        ('{"score":6,"rationale":"x","quotes":[]}', "stop", OutputError.SCHEMA_VIOLATION),
        ('{"score":3,"quotes":[]}', "stop", OutputError.SCHEMA_VIOLATION),
        ('{"score":3,"rationale":"x","quotes":[],"extra":1}', "stop", OutputError.SCHEMA_VIOLATION),
        ('{"score":3,"rationale":"cut he', "length", OutputError.TRUNCATED),
        ("I would say four.", "stop", OutputError.INVALID_JSON),
    ],
)
def test_invalid_answers_have_reasons(text, finish, reason):
    with pytest.raises(InvalidOutput) as e:
        parse_item_output(text, finish_reason=finish)
    assert e.value.reason == reason


def test_tighter_generation_bounds_do_not_change_the_file_schema():
    tight = output_schema(max_rationale_chars=50, max_quotes=1)
    assert tight["properties"]["rationale"]["maxLength"] == 50
    assert output_schema()["properties"]["rationale"]["maxLength"] == 2000
    assert tight["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]


def test_quote_check_normalises_whitespace_and_case():
    dialogue = "Client: I just can't   get up.\nCounselor: What happens then?"
    assert quote_found_share(["i just can't get up.", "what happens then?"], dialogue) == 1.0
    assert quote_found_share(["I never said this"], dialogue) == 0.0
    assert quote_found_share([], dialogue) is None


def test_score_only_schema_for_the_ablation():
    schema = output_schema(score_only=True)
    assert parse_item_output('{"score":3}', schema) == {"score": 3}
    with pytest.raises(InvalidOutput):
        parse_item_output('{"score":3}')  # the full contract wants a rationale


def test_a_multibyte_character_cut_at_the_length_bound_is_dropped_not_an_error():
    from care_ray.contracts.output import output_schema, parse_item_output

    schema = output_schema(max_rationale_chars=10)
    # the grammar counted one character; the detokenizer shows three undecodable bytes
    text = '{"score":2,"rationale":"abcdefghi\ufffd\ufffd\ufffd","quotes":["ok\ufffd"]}'
    value = parse_item_output(text, schema)
    assert value["rationale"] == "abcdefghi" and value["quotes"] == ["ok"]
    # a string really too long is still a schema violation
    with pytest.raises(Exception, match="too long"):
        parse_item_output('{"score":2,"rationale":"abcdefghijk","quotes":[]}', schema)
