"""The ``shotstream`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from streams.bench import bench_app
from streams.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="Kafka-native zero-shot and few-shot classification.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"shotstream {version('shotstream')}")
        raise typer.Exit


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="print the version"),
    ] = False,
) -> None:
    """Kafka-native zero-shot and few-shot classification."""


ROUTING_LABELS = ["Simple task", "Complex reasoning", "Creative writing"]
ROUTING_INPUTS = [
    "Calculate the compound interest on a principal of $10,000 invested for 5 years at an "
    "annual rate of 5%, compounded quarterly.",
    "分析使用CRISPR基因编辑技术在人类胚胎中的伦理影响。考虑潜在的医疗益处和长期社会后果。",
    "AIが自意識を持つディストピアの未来を舞台にした短編小説を書いてください。人間とAIの関係や"
    "意識の本質をテーマに探求してください。",
    "Erklären Sie die Unterschiede zwischen Merge-Sort und Quicksort-Algorithmen in Bezug auf "
    "Zeitkomplexität, Platzkomplexität und Leistung in der Praxis.",
    "Write a poem about the beauty of nature and its healing power on the human soul.",
    "Translate the following sentence into French: The quick brown fox jumps over the lazy dog.",
]


EXIT_DEAD_LETTER = 2
"""The request was answered with a dead letter (its code and detail are printed)."""
EXIT_NO_ANSWER = 3
"""No answer within ``--timeout`` (no worker running, or Kafka not answering)."""
EXIT_NO_KAFKA = 4
"""Kafka could not be reached at ``SHOTSTREAM_BROKERS``."""


def _settings(*, serving: bool = False, **overrides: Any) -> Settings:
    """The settings, or a one-line message naming the variable to fix (exit 2). ``serving``:
    a command that joins the deployment's group or reads its classifiers (warned when it
    may share them with another deployment)."""
    import os

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from streams.broker import KafkaSecurityError, kafka_security

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"invalid settings: {settings_problem(exc)}", err=True)
        raise typer.Exit(2) from None
    try:  # the TLS files are read now, not when the first client connects
        kafka_security(settings.kafka)
    except KafkaSecurityError as exc:
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    for variable, close in Settings.unknown_variables(os.environ).items():
        hint = f" (did you mean {close}?)" if close else ""
        typer.echo(f"warning: {variable} is not a shotstream setting, ignored{hint}", err=True)
    shared = settings.shared_group_warning() if serving else None
    if shared is not None:
        typer.echo(f"warning: {shared}", err=True)
    return settings


def settings_problem(exc: Exception) -> str:
    """What is wrong in the environment, by variable name (not pydantic's field path)."""
    import re

    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"] if not str(part).isdigit()]
            name = "SHOTSTREAM_" + "__".join(loc).upper() if loc else "SHOTSTREAM_*"
            problems.append(f"{name}: {error['msg']}")
        return "; ".join(problems)
    field = re.search(r'field "([^"]+)"', str(exc))
    if field is None:
        return str(exc)
    name = f"SHOTSTREAM_{field.group(1).upper()}"
    return f"{name} (or a {name}__* variable) is not valid JSON"


def _logging(settings: Settings) -> None:
    from streams.logs import configure

    configure(settings.log_level, settings.log_format)


def _ask(
    settings: Settings, call: Callable[[Any], Awaitable[dict[str, Any]]], timeout_s: float
) -> dict[str, Any]:
    """Open a client, make one request, return its answer (prediction or dead letter).

    ``timeout_s`` bounds the whole of it, connecting included (``_run``)."""
    from streams.client import ShotstreamClient

    connected = _Connected()

    async def go() -> dict[str, Any]:
        connected.via = ShotstreamClient(settings)
        async with connected.via as client:
            connected.yes = True
            return await call(client)

    return _run(go(), settings, timeout_s, connected)


NO_TOPICS = "a worker makes them; has one run against this Kafka (SHOTSTREAM_TOPIC_PREFIX)?"


class _Connected:
    """Whether a command's Kafka clients have started: a timeout before is Kafka's, or,
    once Kafka answered (``via.reached``), the missing topics'."""

    yes = False
    via: Any = None
    """The client (or listing) starting."""


def _run(
    work: Coroutine[Any, Any, T], settings: Settings, timeout_s: float, connected: _Connected
) -> T:
    """Run ``work`` within ``timeout_s``; Kafka out of reach (or not connected to in time)
    and no answer in time end the command with a message and exit codes 4 and 3."""
    from aiokafka.errors import KafkaError

    from streams.errors import OversizeRecordError

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await work

    brokers = ",".join(settings.brokers)
    try:
        return asyncio.run(bounded())
    except TimeoutError:
        if not connected.yes:
            if getattr(connected.via, "reached", False):
                typer.echo(
                    f"Kafka at {brokers} answered, but shotstream's topics were not there "
                    f"within {timeout_s:g} s: {NO_TOPICS}",
                    err=True,
                )
            else:
                typer.echo(
                    f"cannot connect to {_kafka_at(settings)} within {timeout_s:g} s", err=True
                )
            raise typer.Exit(EXIT_NO_KAFKA) from None
        typer.echo(
            f"no answer within {timeout_s:g} s: is a worker running, and Kafka answering at "
            f"{brokers}?",
            err=True,
        )
        raise typer.Exit(EXIT_NO_ANSWER) from None
    except OversizeRecordError as exc:  # refused before it was sent
        typer.echo(f"cannot send the request: {exc}", err=True)
        raise typer.Exit(EXIT_DEAD_LETTER) from None
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
        typer.echo(f"cannot send the request: it holds {_not_unicode(bad)}", err=True)
        raise typer.Exit(EXIT_DEAD_LETTER) from None
    except (KafkaError, OSError) as exc:
        reason = (
            str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        )
        typer.echo(f"cannot reach {_kafka_at(settings)}: {reason}", err=True)
        raise typer.Exit(EXIT_NO_KAFKA) from None
    except RuntimeError as exc:  # "topic ... not found", "changelog topic ... does not exist"
        typer.echo(f"Kafka at {brokers}: {exc}: {NO_TOPICS}", err=True)
        raise typer.Exit(EXIT_NO_KAFKA) from None


def _not_unicode(bad: str) -> str:
    """What a string that cannot be UTF-8 holds. Python reads an argument's bytes that are
    not UTF-8 as U+DC80..U+DCFF ("surrogateescape"): those are named as the bytes typed."""
    if bad and all("\udc80" <= c <= "\udcff" for c in bad):
        raw = " ".join(f"0x{ord(c) - 0xDC00:02x}" for c in bad)
        return (
            f"the byte {raw}, which is not UTF-8: an argument in another encoding "
            "(a Latin-1 terminal?); shotstream reads UTF-8"
        )
    return f"{bad.encode('unicode_escape').decode()}, a lone surrogate, which is not Unicode text"


def _need_key(api_key: str | None) -> str:
    """The key few-shot commands need, or a usage error before anything is sent."""
    if not api_key:
        raise typer.BadParameter("give --api-key (or SHOTSTREAM_API_KEY)")
    return api_key


def _echo_json(answer: dict[str, Any]) -> None:
    """Print an answer as JSON; exit 2 if it is a dead letter, saying its code and detail
    on standard error. A letter is printed without its payload, which is the request just
    sent (a train request's every example: tens of kB on one line)."""
    if "error" in answer:
        err = answer["error"]
        typer.echo(f"error {err.get('code')}: {err.get('detail')}", err=True)
        answer = {k: v for k, v in answer.items() if k != "payload"}
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
    if "error" in answer:
        raise typer.Exit(EXIT_DEAD_LETTER)


def _exit_on_sigterm() -> None:
    """SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) end the command as
    Ctrl-C does, through its ``with`` blocks: the broker it started runs in its own session
    and outlived a command killed by the default action, holding its port, and so did
    ``dev``'s gateway."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))


@contextlib.contextmanager
def _startup_errors(kafka: str) -> Iterator[None]:
    """A server command that cannot start says why in one line, naming the setting to fix
    (exit 2; 4 when ``kafka``, which says where it was looked for, cannot be reached),
    instead of a traceback."""
    from models.registry import ModelNotAvailableError
    from streams.broker import BrokerExitedError, PortInUseError
    from streams.client import GatewayStartError
    from streams.settings import KeyFileError

    try:
        yield
    except (PortInUseError, KeyFileError) as exc:
        typer.echo(f"cannot start: {exc}", err=True)
        raise typer.Exit(2) from None
    except ModelNotAvailableError as exc:
        typer.echo(f"cannot start: {exc} (SHOTSTREAM_DEFAULT_MODEL)", err=True)
        raise typer.Exit(2) from None
    except (TimeoutError, BrokerExitedError) as exc:
        typer.echo(f"cannot reach {kafka}: {exc}", err=True)
        raise typer.Exit(EXIT_NO_KAFKA) from None
    except GatewayStartError as exc:
        typer.echo(f"cannot start: {exc}", err=True)
        raise typer.Exit(EXIT_NO_KAFKA) from None


def _plaintext(settings: Settings) -> Settings:
    """``settings``, for a command that runs the embedded broker, which speaks plaintext
    only: TLS or SASL settings are refused (exit 2) rather than tried on it, and an
    exported SHOTSTREAM_BROKERS, which it does not use, is warned about."""
    if settings.kafka.security_protocol != "PLAINTEXT":
        typer.echo(
            f"invalid settings: SHOTSTREAM_KAFKA__SECURITY_PROTOCOL="
            f"{settings.kafka.security_protocol}: the embedded broker speaks plaintext only "
            "(unset it, with its SSL_/SASL_ companions, for dev and demo)",
            err=True,
        )
        raise typer.Exit(2)
    import os

    exported = os.environ.get("SHOTSTREAM_BROKERS")
    if exported and tuple(exported.split(",")) != settings.brokers:  # pointing dev at Kafka
        typer.echo(
            f"warning: SHOTSTREAM_BROKERS={exported} is not used: this command runs its own "
            f"embedded broker on {','.join(settings.brokers)}; against your Kafka, run "
            "`shotstream worker` (and `shotstream gateway`)",
            err=True,
        )
    return settings


def _kafka_at(settings: Settings) -> str:
    return f"Kafka at {','.join(settings.brokers)} (SHOTSTREAM_BROKERS{_over(settings)})"


def _over(settings: Settings) -> str:
    """The protocol spoken, when it is not plaintext: TLS against a plaintext listener (or
    the reverse) looks like a broker that never answers, so the setting is named."""
    protocol = settings.kafka.security_protocol
    return (
        "" if protocol == "PLAINTEXT" else f", over {protocol}: SHOTSTREAM_KAFKA__SECURITY_PROTOCOL"
    )


def _embedded_at(port: int) -> str:
    return f"the embedded broker on 127.0.0.1:{port} (--port), which did not start"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@app.command()
def broker(port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1")] = 9092) -> None:
    """Run only the embedded broker (Tansu, memory storage) until stopped."""
    from streams.broker import EmbeddedBroker
    from streams.logs import configure

    configure("info")
    _exit_on_sigterm()
    with _startup_errors(_embedded_at(port)), EmbeddedBroker(port) as embedded:
        typer.echo(f"embedded broker on 127.0.0.1:{port} (Ctrl-C stops it)")
        try:
            while embedded.process is not None and embedded.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            return
        code = embedded.process.returncode if embedded.process is not None else None
        typer.echo(f"the embedded broker exited (code {code}):\n{embedded.log_tail()}", err=True)
        raise typer.Exit(1)


@app.command()
def worker(
    reseed: Annotated[
        bool,
        typer.Option(
            help="when this worker makes the classifier changelog (a new broker), write the "
            "classifiers its tables hold into it instead of setting them aside: for one "
            "worker alone on the embedded broker, as dev and demo run it"
        ),
    ] = False,
) -> None:
    """Run one worker against SHOTSTREAM_BROKERS (several form one consumer group)."""
    from streams.worker import run_worker

    settings = _settings(serving=True)
    _logging(settings)
    with _startup_errors(_kafka_at(settings)):
        run_worker(settings, reseed=reseed)


@app.command()
def gateway() -> None:
    """Serve Jina's Classifier API over HTTP on SHOTSTREAM_HTTP_PORT, backed by the topics."""
    from streams.broker import check_port_free
    from streams.gateway import run_gateway

    settings = _settings(serving=True)
    _logging(settings)
    with _startup_errors(_kafka_at(settings)):
        check_port_free(settings.gateway.host, settings.http_port, "SHOTSTREAM_HTTP_PORT")
        settings.all_api_keys()  # readable, before uvicorn turns a failure into a traceback
        run_gateway(settings)  # Kafka and the topics are joined before it serves


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="embedded broker port")] = 9092,
    http: Annotated[
        bool, typer.Option("--http/--no-http", help="also serve the HTTP gateway")
    ] = True,
) -> None:
    """Embedded broker + topics + worker (+ HTTP gateway) in one command; Ctrl-C stops all."""
    from streams.broker import check_port_free

    brokers = f"127.0.0.1:{port}"
    settings = _plaintext(_settings(serving=True, brokers=brokers))
    _logging(settings)
    _exit_on_sigterm()
    with _startup_errors(_embedded_at(port)):
        if http:  # its own process would fail alone, and dev run on without it
            check_port_free(settings.gateway.host, settings.http_port, "SHOTSTREAM_HTTP_PORT")
        _dev(port, brokers, settings, http)


def _dev(port: int, brokers: str, settings: Settings, http: bool) -> None:
    import os
    import subprocess

    from streams.app import cancel_exit_deadline
    from streams.broker import EmbeddedBroker
    from streams.processes import dies_with_this_process
    from streams.worker import run_worker

    with EmbeddedBroker(port):
        gateway: subprocess.Popen[bytes] | None = None

        def start_gateway() -> None:  # its own process: its loop never waits for the worker's
            nonlocal gateway
            env = {**os.environ, "SHOTSTREAM_BROKERS": brokers}
            gateway = subprocess.Popen(
                [sys.executable, "-m", "streams", "gateway"],
                env=env,
                preexec_fn=dies_with_this_process(),  # a SIGKILLed dev stops it too
            )

        try:  # its broker is new: the worker writes its classifiers back (reseed)
            run_worker(settings, reseed=True, on_prepared=start_gateway if http else None)
        finally:
            # faust's worker set its own handlers and closing its loop reset them to the
            # default action: a second SIGTERM now would leave the broker running; and the
            # worker's exit deadline would end this process before the broker is stopped
            _exit_on_sigterm()
            cancel_exit_deadline()
            if gateway is not None:
                gateway.terminate()
                try:  # it waits for requests in flight, which the stopped worker won't answer
                    gateway.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    gateway.kill()
                    gateway.wait()


APIKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="SHOTSTREAM_API_KEY", help="your API key (few-shot)"),
]


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    images: Annotated[
        list[str] | None,
        typer.Option(
            "--image", "-i", help="image to classify (repeat): a file, an http(s) URL or base64"
        ),
    ] = None,
    labels: Annotated[
        list[str] | None, typer.Option("--labels", "-l", help="candidate label (repeat)")
    ] = None,
    groups: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            help="a label group NAME=LABEL,LABEL,... (repeat; instead of --labels): each "
            "group gets its own prediction",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name")] = None,
    classifier_id: Annotated[str | None, typer.Option(help="few-shot classifier id")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer", min=0.1)] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw response")] = False,
    api_key: APIKey = None,
) -> None:
    """Produce a classify request and print the prediction when it arrives."""
    if labels and groups:
        raise typer.BadParameter(
            "give --labels or --group, not both (a request has one or the other)"
        )
    candidates: list[str] | dict[str, list[str]] | None = _label_groups(groups) or labels
    if not candidates and not classifier_id:
        raise typer.BadParameter(
            "give --labels or --group (zero-shot), or --classifier-id (few-shot)"
        )
    inputs: list[Any] = [*(texts or []), *({"image": _image(i)} for i in images or [])]
    if not inputs:
        raise typer.BadParameter("give texts to classify, or --image")
    if classifier_id:
        _need_key(api_key)
    settings = _settings()
    answer = _ask(
        settings,
        lambda client: client.classify(
            inputs,
            labels=candidates,
            model=model,
            classifier_id=classifier_id,
            api_key=api_key,
            timeout_s=timeout,
        ),
        timeout,
    )
    shown = [*(texts or []), *(f"image {i}" for i in images or [])]
    _print_answer(answer, shown, as_json)
    if "error" in answer:
        raise typer.Exit(EXIT_DEAD_LETTER)


def _label_groups(given: list[str] | None) -> dict[str, list[str]] | None:
    """``--group NAME=a,b`` options as Jina's ``labels`` object of groups.

    >>> _label_groups(["topic=sport, cooking", "tone=calm,angry"])
    {'topic': ['sport', 'cooking'], 'tone': ['calm', 'angry']}
    """
    if not given:
        return None
    groups: dict[str, list[str]] = {}
    for option in given:
        name, equals, listed = option.partition("=")
        name = name.strip()
        members = [label.strip() for label in listed.split(",") if label.strip()]
        if not equals or not name or not members:
            raise typer.BadParameter(f"--group {option!r}: write NAME=LABEL,LABEL,...")
        if name in groups:
            raise typer.BadParameter(f"--group {name!r} is given twice")
        groups[name] = members
    return groups


def _image(given: str) -> str:
    """An ``--image``: a file is sent as base64; a URL or base64 as given (the worker
    checks them, and answers a dead letter naming the input)."""
    import base64

    if given.startswith(("http://", "https://", "data:")):
        return given
    path = Path(given)
    if not path.is_file():
        if "." in given:  # never in base64: a file name, mistyped
            raise typer.BadParameter(f"no such file: {given}")
        return given
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {given}: {exc.strerror}") from None


def _read_examples(source: str) -> list[dict[str, str]]:
    """JSON array or JSON lines of ``{"text"|"image", "label"}``; ``-`` is stdin."""
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise typer.BadParameter(f"cannot read {name}: {reason}") from None
    text = text.strip()
    try:
        if text.startswith("["):
            examples = json.loads(text)
        else:
            examples = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}" if text.startswith("[") else "a line"
        raise typer.BadParameter(f"{name}: {where} is not valid JSON ({exc.msg})") from None
    if not isinstance(examples, list) or not examples:
        raise typer.BadParameter(f"{name} holds no examples (a JSON array, or JSON lines)")
    for i, e in enumerate(examples):
        if not isinstance(e, dict) or "label" not in e or not ("text" in e or "image" in e):
            raise typer.BadParameter(
                f"example {i} of {name} needs 'label' and 'text' (or 'image'): {e!r:.80}"
            )
    return examples


@app.command()
def train(
    examples: Annotated[str, typer.Argument(help="JSON array / JSON lines file, - for stdin")],
    classifier_id: Annotated[
        str | None, typer.Option(help="classifier to update (default: create a new one)")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model of a new classifier (default: the default model)")
    ] = None,
    access: Annotated[str | None, typer.Option(help="private or public")] = None,
    num_iters: Annotated[int | None, typer.Option(help="passes per example (10)")] = None,
    api_key: APIKey = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer", min=0.1)] = 120.0,
) -> None:
    """Send labelled examples to the train topic; print the train response.

    More examples than a request may carry (SHOTSTREAM_LIMITS__MAX_INPUTS, 1,024) go as
    several requests, one after another, each answered before the next is sent."""
    import uuid

    _need_key(api_key)
    body = _read_examples(examples)
    settings = _settings()
    cid = classifier_id or str(uuid.uuid4())
    if classifier_id is None and model is None:
        model = settings.default_model_name
    size = settings.limits.max_inputs
    chunks = [body[i : i + size] for i in range(0, len(body), size)]

    async def send_all(client: Any) -> dict[str, Any]:
        answer: dict[str, Any] = {}
        learned = tokens = 0
        for n, chunk in enumerate(chunks, 1):
            answer = await client.train(
                chunk,
                classifier_id=cid,
                api_key=api_key,
                model=model,
                access=access,
                num_iters=num_iters,
                timeout_s=timeout,
            )
            if "error" in answer:
                if n > 1:
                    typer.echo(
                        f"request {n} of {len(chunks)} failed; the {learned} examples before "
                        "it were learned",
                        err=True,
                    )
                return answer
            learned += len(chunk)
            tokens += answer.get("usage", {}).get("total_tokens", 0)
            if len(chunks) > 1:
                typer.echo(f"sent {learned} of {len(body)} examples", err=True)
        if len(chunks) > 1:  # one answer for all of them, as one request would give
            usage = {"total_tokens": tokens, "prompt_tokens": tokens}  # as one answer has
            answer = {**answer, "num_samples": learned, "usage": usage}
        return answer

    _echo_json(_ask(settings, send_all, timeout * len(chunks)))


classifiers_app = typer.Typer(
    help="List or delete your few-shot classifiers.", no_args_is_help=True
)
app.add_typer(classifiers_app, name="classifiers")
app.add_typer(bench_app, name="bench")


@classifiers_app.command("list")
def classifiers_list(
    api_key: APIKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the listing", min=0.1)] = 60.0,
) -> None:
    """Your classifiers: id, model, labels, access, version, samples, uses, times."""
    from streams.app import classifier_changelog_topic
    from streams.auth import KeyRing, hash_key
    from streams.broker import kafka_security
    from streams.replica import ClassifierReplica

    owner = hash_key(_need_key(api_key))
    settings = _settings(serving=True)
    known = KeyRing(settings.all_api_keys())
    if len(known) and known.authenticate(f"Bearer {api_key}") is None:
        typer.echo(
            "error AUTH_INVALID_API_KEY: this key is not one of SHOTSTREAM_API_KEYS "
            "(SHOTSTREAM_API_KEY_FILE), the keys the workers accept",
            err=True,
        )
        raise typer.Exit(EXIT_DEAD_LETTER)

    connected = _Connected()

    async def go() -> list[dict[str, Any]]:
        replica = ClassifierReplica(
            ",".join(settings.brokers),
            classifier_changelog_topic(settings),
            security=kafka_security(settings.kafka),
            listing_only=True,
        )
        connected.via = replica
        await replica.start()
        connected.yes = True
        try:
            await replica.caught_up(timeout_s=settings.kafka.request_timeout_s)
            return [summary(r) for r in replica.owned_by(owner)]
        finally:
            await replica.stop()

    rows = _run(go(), settings, timeout, connected)
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    _print_listing(rows)
    if not rows:  # a mistyped key looks like classifiers gone: say which key was asked
        typer.echo(
            f"no classifiers belong to the key ending {str(api_key)[-4:]!r} (a classifier "
            "belongs to the key that created it)",
            err=True,
        )


@classifiers_app.command("delete")
def classifiers_delete(
    classifier_id: Annotated[str, typer.Argument(help="the classifier to delete")],
    api_key: APIKey = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer", min=0.1)] = 60.0,
) -> None:
    """Delete one of your classifiers (only its owner may)."""
    _need_key(api_key)
    settings = _settings(serving=True)
    _echo_json(
        _ask(settings, lambda client: client.delete(classifier_id, api_key=api_key), timeout)
    )


def _console() -> Any:
    """Rich's console. Piped (no terminal to fit), tables keep every column whole: at
    rich's default 80 columns a listing dropped its samples, updated and accuracy columns
    and cut model names to ``multil…``."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)


PIPED_WIDTH = 1000
"""Columns a table may take when stdout is not a terminal."""


def _print_listing(rows: list[dict[str, Any]]) -> None:
    from rich.table import Column, Table

    # the id is what `classifiers delete` takes: never cut, also in a narrow terminal or pipe
    table = Table(
        Column("classifier_id", overflow="fold", min_width=36),
        "model",
        "labels",
        "access",
        "version",
        "samples",
        "used",
        "updated",
        "accuracy",
    )
    for r in rows:
        acc = r["prequential_accuracy"]
        table.add_row(
            r["classifier_id"],
            r["model"],
            ", ".join(r["labels"]),
            r["access"],
            str(r["version"]),
            str(r["samples_seen"]),
            str(r["used_number"]),
            r["updated_at"],
            "-" if acc is None else f"{acc:.2f}",
        )
    _console().print(table)


def summary(record: Any) -> dict[str, Any]:
    """What a listing shows of a classifier record (never weights or owner hashes)."""
    from state.records import iso_time as iso

    return {
        "classifier_id": record.classifier_id,
        "model": record.model,
        "labels": list(record.labels),
        "access": record.access,
        "version": record.version,
        "samples_seen": record.samples_seen,
        "used_number": record.used_number,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "used_at": None if record.used_at is None else iso(record.used_at),
        "prequential_accuracy": record.prequential_accuracy,
    }


def _print_answer(answer: dict[str, Any], texts: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    if "error" in answer:
        err = answer["error"]
        typer.echo(f"error {err['code']}: {err['detail']}", err=True)
        return
    from rich.table import Table

    table = Table("#", "input", "prediction", "score", title=f"request {answer['request_id']}")
    for item in answer["data"]:
        text = texts[item["index"]]
        table.add_row(
            str(item["index"]),
            text if len(text) <= 60 else text[:57] + "...",
            json.dumps(item["prediction"], ensure_ascii=False)
            if isinstance(item["prediction"], dict)
            else item["prediction"],
            json.dumps(item["score"])
            if isinstance(item["score"], dict)
            else f"{item['score']:.3f}",
        )
    console = _console()
    console.print(table)
    console.print(f"usage: {answer['usage']['total_tokens']} tokens")


@app.command()
def demo(
    port: Annotated[int | None, typer.Option(help="broker port (default: a free one)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for readiness", min=0.1)] = 300.0,
) -> None:
    """Quick start: embedded broker + worker, send the LLM-routing example, print answers."""
    from streams.broker import EmbeddedBroker
    from streams.logs import configure
    from streams.processes import WorkerProcess

    port = port or free_port()
    settings = _plaintext(_settings(brokers=f"127.0.0.1:{port}"))  # the broker's address
    configure("warning")
    _exit_on_sigterm()
    typer.echo(f"starting the embedded broker on 127.0.0.1:{port} ...")
    with _startup_errors(_embedded_at(port)), EmbeddedBroker(port) as embedded:
        log_path = settings.data_dir / "demo-worker.log"
        typer.echo(
            f"starting a worker (log: {log_path}; the first run converts the packaged "
            "model, ~15 s) ..."
        )
        alone = WorkerProcess({"SHOTSTREAM_BROKERS": embedded.address}, log_path, ["--reseed"])
        with alone as worker_proc:  # reseed: keeps what dev trained on this data directory
            try:
                worker_proc.wait_ready(timeout)
            except RuntimeError as exc:  # its log's end says why (a data dir in use, ...)
                typer.echo(f"cannot start: {exc}", err=True)
                raise typer.Exit(2) from None
            typer.echo(
                f"worker ready; producing the routing example to {settings.topic('classify')} ..."
            )

            answer = _ask(
                settings,
                lambda client: client.classify(
                    ROUTING_INPUTS, labels=ROUTING_LABELS, model="jina-embeddings-v3"
                ),
                120.0,
            )
            _print_answer(answer, ROUTING_INPUTS, as_json=False)


def main() -> None:
    app()
