"""The client commands fail with one line that says what to fix, and an exit code."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streams.cli import EXIT_NO_KAFKA, app


def run(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> tuple:
    result = CliRunner().invoke(app, args, env=env, input=stdin)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SHOTSTREAM_PARTITIONS": "0"}, "SHOTSTREAM_PARTITIONS"),
        ({"SHOTSTREAM_BROKERS": "nohost"}, "SHOTSTREAM_BROKERS"),
        ({"SHOTSTREAM_BATCHING__MAX_BATCH_SIZE": "x"}, "SHOTSTREAM_BATCHING__MAX_BATCH_SIZE"),
        ({"SHOTSTREAM_GATEWAY__TIERS": "{bad"}, "SHOTSTREAM_GATEWAY"),
    ],
)
def test_a_bad_setting_is_named_not_a_traceback(env: dict[str, str], named: str) -> None:
    code, output = run(["classify", "-l", "a", "-l", "b", "x"], env)
    assert code == 2
    assert f"invalid settings: {named}" in output
    assert "Traceback" not in output


def test_kafka_out_of_reach_is_one_line_and_exit_4() -> None:
    """A port nothing listens on (refused at once): the classify, train, delete and list
    commands say where they looked for Kafka."""
    env = {"SHOTSTREAM_BROKERS": "127.0.0.1:1", "SHOTSTREAM_API_KEY": "k"}
    for args, stdin in (
        (["classify", "-l", "a", "-l", "b", "x"], None),
        (["train", "-"], '[{"text": "x", "label": "a"}]'),
        (["classifiers", "delete", "c-1"], None),
        (["classifiers", "list"], None),
    ):
        code, output = run(args, env, stdin)
        assert code == EXIT_NO_KAFKA, (args, output)
        assert "cannot reach Kafka at 127.0.0.1:1 (SHOTSTREAM_BROKERS)" in output
        assert "Traceback" not in output


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("{bad", "not valid JSON"),
        ("[1, 2]", "needs 'label'"),
        ('[{"text": "x"}]', "needs 'label'"),
        ("", "holds no examples"),
    ],
)
def test_bad_examples_are_refused_before_kafka(stdin: str, message: str) -> None:
    env = {"SHOTSTREAM_BROKERS": "127.0.0.1:1", "SHOTSTREAM_API_KEY": "k"}
    code, output = run(["train", "-"], env, stdin)
    assert code == 2
    assert message in output


def test_few_shot_commands_need_a_key_before_anything_is_sent() -> None:
    env = {"SHOTSTREAM_BROKERS": "127.0.0.1:1"}
    for args in (
        ["train", "-"],
        ["classify", "--classifier-id", "c-1", "x"],
        ["classifiers", "delete", "c-1"],
    ):
        code, output = run(args, env, '[{"text": "x", "label": "a"}]')
        assert code == 2, (args, output)
        assert "--api-key" in output
