"""The client commands fail with one line that says what to fix, and an exit code."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("command", [["classify", "-l", "a", "-l", "b", "x"], ["worker"]])
def test_an_unreadable_tls_file_is_named_before_kafka_is_tried(
    command: list[str], tmp_path: Path
) -> None:
    env = {
        "SHOTSTREAM_BROKERS": "127.0.0.1:1",
        "SHOTSTREAM_DATA_DIR": str(tmp_path),
        "SHOTSTREAM_KAFKA__SECURITY_PROTOCOL": "SSL",
        "SHOTSTREAM_KAFKA__SSL_CAFILE": str(tmp_path / "missing.pem"),
    }
    code, output = run(command, env)
    assert code == 2, output
    assert f"invalid settings: SHOTSTREAM_KAFKA__SSL_CAFILE={tmp_path / 'missing.pem'}" in output
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
    ("protocol", "named"),
    [
        ("PLAINTEXT", "(SHOTSTREAM_BROKERS)"),
        ("SSL", "(SHOTSTREAM_BROKERS, over SSL: SHOTSTREAM_KAFKA__SECURITY_PROTOCOL)"),
    ],
)
def test_a_broker_that_never_answers_is_kafka_s_fault_not_the_workers(
    protocol: str, named: str
) -> None:
    """A listener that takes the connection and says nothing (what TLS against a plaintext
    listener looks like): the commands said "no answer: is a worker running?" (exit 3),
    pointing at the workers; it is Kafka that was never reached, and when TLS is on, the
    protocol setting is named."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        env = {
            "SHOTSTREAM_BROKERS": f"127.0.0.1:{port}",
            "SHOTSTREAM_API_KEY": "k",
            "SHOTSTREAM_KAFKA__SECURITY_PROTOCOL": protocol,
        }
        for args in (["classify", "-l", "a", "x"], ["classifiers", "list"]):
            code, output = run([*args, "--timeout", "1"], env)
            assert code == EXIT_NO_KAFKA, (args, output)
            assert f"cannot connect to Kafka at 127.0.0.1:{port} {named} within 1 s" in output


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


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SHOTSTREAM_LOG_LEVEL": "verbose"}, "SHOTSTREAM_LOG_LEVEL"),
    ],
)
def test_server_settings_are_checked_before_starting(env: dict[str, str], named: str) -> None:
    """An unknown log level and a missing key file were tracebacks at start."""
    code, output = run(["worker"], env)
    assert code == 2
    assert f"invalid settings: {named}" in output
    assert "Traceback" not in output


def test_server_commands_that_cannot_start_say_why_in_one_line(tmp_path: Path) -> None:
    """A taken port (broker, metrics, HTTP), an unknown default model and Kafka out of
    reach were 40- to 100-line tracebacks; each is now one line naming what to fix."""
    import socket

    from streams.cli import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        base = {"SHOTSTREAM_DATA_DIR": str(tmp_path)}
        cases = [
            (["broker", "--port", busy], {}, 2, "the embedded broker (--port): 127.0.0.1:"),
            (["dev", "--port", busy], {}, 2, "the embedded broker (--port)"),
            (["gateway"], {"SHOTSTREAM_HTTP_PORT": busy}, 2, "SHOTSTREAM_HTTP_PORT"),
            (["worker"], {"SHOTSTREAM_METRICS_PORT": busy}, 2, "SHOTSTREAM_METRICS_PORT"),
            (["worker"], {"SHOTSTREAM_DEFAULT_MODEL": "no-such-model"}, 2, "DEFAULT_MODEL"),
            (["worker"], {"SHOTSTREAM_API_KEY_FILE": "/nonexistent/keys"}, 2, "KEY_FILE"),
            (["gateway"], {"SHOTSTREAM_API_KEY_FILE": "/nonexistent/keys"}, 2, "KEY_FILE"),
            (
                ["worker"],
                {
                    "SHOTSTREAM_BROKERS": f"127.0.0.1:{free_port()}",
                    "SHOTSTREAM_KAFKA__REQUEST_TIMEOUT_S": "1",
                },
                EXIT_NO_KAFKA,
                "cannot reach Kafka at 127.0.0.1:",
            ),
        ]
        for args, env, code, said in cases:
            got, output = run(args, {**base, **env})
            assert (got, "Traceback" in output) == (code, False), (args, output)
            assert said in output, (args, output)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_stops_the_broker_command_and_its_broker(tmp_path: Path, signame: str) -> None:
    """SIGTERM (what systemd, docker and kill send) and SIGHUP (a closed terminal) took the
    command's default action: no cleanup ran, and the broker, in its own session, kept the
    port for good."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from streams.cli import free_port

    port = free_port()

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    command = subprocess.Popen(
        [sys.executable, "-m", "streams", "broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not listening():
            assert command.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        signum = getattr(signal, signame)
        command.send_signal(signum)
        assert command.wait(timeout=30) == 128 + signum
        deadline = time.monotonic() + 10
        while listening() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not listening()  # the broker went with it
    finally:
        command.kill()


def test_the_ready_line_is_written_at_any_log_level(caplog: pytest.LogCaptureFixture) -> None:
    """WorkerProcess and `shotstream demo` wait for the ready line; at
    SHOTSTREAM_LOG_LEVEL=warning it was never written, and demo failed."""
    import logging

    from streams.logs import announce

    logger = logging.getLogger("shotstream-test-ready")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        announce(logger, "warning", "shotstream worker ready: %s", "x")
        announce(logger, "debug", "shotstream worker ready: %s", "y")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "shotstream worker ready: x"),
        (logging.INFO, "shotstream worker ready: y"),
    ]


def test_an_unknown_shotstream_variable_is_warned_about_not_ignored_in_silence() -> None:
    """SHOTSTREAM_BROKER (no S) left the brokers at 127.0.0.1:9092 without a word."""
    env = {"SHOTSTREAM_BROKER": "kafka-1:9092", "SHOTSTREAM_BROKERS": "127.0.0.1:1"}
    code, output = run(["classify", "-l", "a", "-l", "b", "x"], env)
    assert code == EXIT_NO_KAFKA
    assert (
        "warning: SHOTSTREAM_BROKER is not a shotstream setting, ignored "
        "(did you mean SHOTSTREAM_BROKERS?)" in output
    )
    code, output = run(
        ["classify", "-l", "a", "-l", "b", "x"], {"SHOTSTREAM_BROKERS": "127.0.0.1:1"}
    )
    assert "is not a shotstream setting" not in output


def test_the_port_check_knows_ipv6_and_only_calls_a_taken_port_taken() -> None:
    """It bound an IPv4 socket whatever the host: `SHOTSTREAM_GATEWAY__HOST=::1` (which
    uvicorn serves) was refused as "in use"."""
    import socket

    from streams.broker import PortInUseError, check_port_free

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    with socket.socket(socket.AF_INET6) as taken:
        try:
            taken.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(PortInUseError, match=r"x: ::1:\d+ is in use"):
            check_port_free("::1", port, "x")
    check_port_free("::1", 0, "x")


TRAIN = ["train", "-"]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (TRAIN, '[{"text": "' + "word " * 3_500_000 + '", "label": "a"}]', "over the 16,777,"),
        (TRAIN, '[{"text": "ok \\ud800", "label": "a"}]', "\\ud800, a lone surrogate"),
        # what Python makes of a Latin-1 "café" typed in a UTF-8 locale
        (["classify", "-l", "a", "caf\udce9"], None, "the byte 0xe9, which is not UTF-8"),
    ],
)
def test_a_request_the_client_cannot_send_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, args: list[str], stdin: str | None, message: str
) -> None:
    """Over the message limit, or not Unicode: refused while encoding, before Kafka (a
    traceback and exit 1 before). No broker needed: the client never gets to send."""
    from streams import client

    async def started(self: client.ShotstreamClient) -> client.ShotstreamClient:
        return self

    monkeypatch.setattr(client.ShotstreamClient, "_start", started)
    code, output = run(args, {"SHOTSTREAM_API_KEY": "k"}, stdin)
    assert code == 2, output
    assert "cannot send the request" in output
    assert message in output
    assert "Traceback" not in output


def test_a_prefix_of_its_own_with_the_default_group_is_warned_about() -> None:
    from streams.settings import Settings

    assert Settings().shared_group_warning() is None
    assert Settings(kafka={"group_id": "team-a"}, topic_prefix="a.").shared_group_warning() is None
    warning = Settings(topic_prefix="a.").shared_group_warning()
    assert warning is not None
    assert "SHOTSTREAM_KAFKA__GROUP_ID" in warning
    assert "shotstream-classifiers-changelog" in warning


def test_the_broker_command_says_when_its_broker_dies() -> None:
    """It slept on, saying it was a broker, after Tansu had gone."""
    import os
    import signal
    import subprocess
    import sys

    from streams.cli import free_port

    port = free_port()
    command = subprocess.Popen(
        [sys.executable, "-m", "streams", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # once it says so, its broker (the child process it started) is ready; a broker
        # that merely accepts connections is not (killed then, the command exits 4:
        # "cannot reach", as it should)
        assert command.stdout is not None
        assert "embedded broker on" in command.stdout.readline()
        children = [
            int(pid)
            for pid in os.listdir("/proc")
            if pid.isdigit() and _parent_of(int(pid)) == command.pid
        ]
        os.kill(children[0], signal.SIGKILL)
        _, err = command.communicate(timeout=30)
        assert command.returncode == 1
        assert "the embedded broker exited (code -9)" in err
    finally:
        command.kill()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_piped_listing_keeps_every_column_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """At rich's default 80 columns a piped listing lost samples, updated and accuracy and
    cut the model name (``multil…``)."""
    from streams.cli import _print_listing

    row = {
        "classifier_id": "0b7f3c1e-6a4d-4c55-9a43-3f2d1c0e9b8a",
        "model": "multilingual-e5-small",
        "labels": ["billing", "bug report", "feature request", "account access"],
        "access": "private",
        "version": 12,
        "samples_seen": 345,
        "used_number": 6789,
        "updated_at": "2026-11-24T04:30:00Z",
        "prequential_accuracy": 0.875,
    }
    _print_listing([row])
    out = capsys.readouterr().out
    shown_all = ("multilingual-e5-small", "samples", "used", "updated", "accuracy", "0.88", "345")
    for shown in (*shown_all, "6789"):
        assert shown in out
    assert "2026-11-24T04:30:00Z" in out
    assert "account access" in out


@pytest.mark.parametrize("command", [["dev", "--no-http"], ["demo"]])
def test_the_embedded_broker_commands_refuse_tls_and_sasl(command: list[str]) -> None:
    env = {
        "SHOTSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SHOTSTREAM_KAFKA__SASL_USERNAME": "u",
        "SHOTSTREAM_KAFKA__SASL_PASSWORD": "p",
    }
    code, output = run(command, env)
    assert code == 2, output
    assert "the embedded broker speaks plaintext only" in output


def test_the_embedded_broker_commands_say_an_exported_broker_list_is_not_used(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dev` with SHOTSTREAM_BROKERS exported ran on its embedded broker without a word, and
    the user's Kafka never saw a request."""
    from streams.cli import _plaintext
    from streams.settings import Settings

    monkeypatch.setenv("SHOTSTREAM_BROKERS", "kafka-1:9092,kafka-2:9092")
    _plaintext(Settings(brokers="127.0.0.1:9092"))
    err = capsys.readouterr().err
    assert "SHOTSTREAM_BROKERS=kafka-1:9092,kafka-2:9092 is not used" in err
    assert "embedded broker on 127.0.0.1:9092" in err
    monkeypatch.setenv("SHOTSTREAM_BROKERS", "127.0.0.1:9092")  # dev's own: nothing to say
    _plaintext(Settings(brokers="127.0.0.1:9092"))
    assert capsys.readouterr().err == ""


def test_a_large_training_set_goes_as_several_requests_and_a_letter_prints_no_payload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,500 examples were one request over the 1,024-input limit: an INPUT_LIMIT_EXCEEDED
    dead letter printed whole on stdout (every example, ~80 kB on one line). They now go
    as requests of at most 1,024 to the same classifier, answered as one; a letter is
    printed without its payload, its code and detail on stderr."""
    import orjson

    from streams import client

    sent: list[dict[str, Any]] = []

    async def started(self: client.ShotstreamClient) -> client.ShotstreamClient:
        return self

    async def train(self: Any, examples: list[Any], **kw: Any) -> dict[str, Any]:
        sent.append({"n": len(examples), **kw})
        if examples[0]["label"] == "bad":
            return {"request_id": "r", "error": {"code": "INPUT_INVALID", "detail": "no"},
                    "payload": orjson.dumps(examples).decode()}  # fmt: skip
        return {"classifier_id": kw["classifier_id"], "num_samples": len(examples),
                "version": len(sent), "usage": {"total_tokens": 10 * len(examples),
                                                "prompt_tokens": 10 * len(examples)}}  # fmt: skip

    monkeypatch.setattr(client.ShotstreamClient, "_start", started)
    monkeypatch.setattr(client.ShotstreamClient, "train", train)
    examples = "\n".join(json.dumps({"text": f"t{i}", "label": "a"}) for i in range(1500))
    code, output = run(["train", "-", "--classifier-id", "c-1"], {"SHOTSTREAM_API_KEY": "k"},
                       examples)  # fmt: skip
    assert code == 0, output
    assert [(s["n"], s["classifier_id"]) for s in sent] == [(1024, "c-1"), (476, "c-1")]
    assert "sent 1024 of 1500 examples" in output
    answer = json.loads(output[output.index("{") :])
    assert (answer["num_samples"], answer["version"]) == (1500, 2)
    assert answer["usage"] == {"total_tokens": 15000, "prompt_tokens": 15000}  # one answer's shape

    sent.clear()
    bad = "\n".join(json.dumps({"text": "x" * 100, "label": "bad"}) for _ in range(10))
    code, output = run(["train", "-"], {"SHOTSTREAM_API_KEY": "k"}, bad)
    assert code == 2, output
    assert "error INPUT_INVALID: no" in output
    assert "x" * 100 not in output  # the examples are not printed back


def test_listing_with_a_key_the_workers_do_not_know_is_refused_not_empty() -> None:
    """A mistyped key listed nothing and exited 0, as if its classifiers were gone."""
    env = {"SHOTSTREAM_BROKERS": "127.0.0.1:1", "SHOTSTREAM_API_KEYS": "key-a,key-b"}
    code, output = run(["classifiers", "list", "--api-key", "key-c"], env)
    assert code == 2, output
    assert "AUTH_INVALID_API_KEY" in output
    assert "SHOTSTREAM_API_KEYS" in output


def test_version_is_the_installed_package_s() -> None:
    from importlib.metadata import version

    assert run(["--version"]) == (0, f"shotstream {version('shotstream')}\n")


@pytest.mark.parametrize(
    "command",
    [
        ["classify", "-l", "a", "x"],
        ["train", "--classifier-id", "c", "-"],
        ["classifiers", "list"],
        ["classifiers", "delete", "c"],
        ["demo"],
    ],
)
def test_a_timeout_that_is_not_positive_is_refused(command: list[str]) -> None:
    """`--timeout -1` was taken, and reported as "no answer" (exit 3) before anything was
    sent."""
    code, output = run([*command, "--timeout", "-1"])
    assert code == 2
    assert "--timeout" in output


def test_classify_sends_image_files_urls_and_base64_beside_texts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI could classify texts only: an image needed a hand-written Kafka record."""
    import base64

    from streams import client

    sent: list[list[Any]] = []

    async def started(self: client.ShotstreamClient) -> client.ShotstreamClient:
        return self

    async def classify(self: Any, inputs: list[Any], **kw: Any) -> dict[str, Any]:
        sent.append(inputs)
        data = [{"index": i, "prediction": "cat", "score": 0.9} for i in range(len(inputs))]
        return {"request_id": "r", "data": data, "usage": {"total_tokens": 3}}

    monkeypatch.setattr(client.ShotstreamClient, "_start", started)
    monkeypatch.setattr(client.ShotstreamClient, "classify", classify)
    photo = tmp_path / "cat.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    url = "https://example.com/cat.jpg"
    code, output = run(["classify", "-l", "cat", "a cat", "-i", str(photo), "--image", url])
    assert code == 0, output
    encoded = base64.b64encode(photo.read_bytes()).decode()
    assert sent == [["a cat", {"image": encoded}, {"image": url}]]
    assert "image https://example.com/cat.jpg" in output

    code, output = run(["classify", "-l", "cat"])
    assert code == 2
    assert "give texts to classify, or --image" in output
    code, output = run(["classify", "-l", "cat", "-i", str(tmp_path / "dog.png")])
    assert code == 2
    assert "no such file" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-g", "topic"], "write NAME=LABEL,LABEL"),
        (["-g", "=a,b"], "write NAME=LABEL,LABEL"),
        (["-g", "topic= , "], "write NAME=LABEL,LABEL"),
        (["-g", "t=a", "-g", "t=b"], "given twice"),
        (["-g", "t=a,b", "-l", "c"], "not both"),
    ],
)
def test_label_groups_are_checked_before_kafka(args: list[str], message: str) -> None:
    code, output = run(["classify", *args, "x"], {"SHOTSTREAM_BROKERS": "127.0.0.1:1"})
    assert code == 2, output
    assert message in output
