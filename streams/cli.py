"""The ``shotstream`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Annotated, Any

import typer

from streams.settings import Settings

app = typer.Typer(
    help="Kafka-native zero-shot and few-shot classification.",
    no_args_is_help=True,
    add_completion=False,
)

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


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@app.command()
def broker(port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1")] = 9092) -> None:
    """Run only the embedded broker (Tansu, memory storage) until stopped."""
    from streams.broker import EmbeddedBroker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with EmbeddedBroker(port):
        typer.echo(f"embedded broker on 127.0.0.1:{port} (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
def worker() -> None:
    """Run one worker against SHOTSTREAM_BROKERS (several form one consumer group)."""
    from streams.worker import run_worker

    settings = _settings()
    _logging(settings)
    run_worker(settings)


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="embedded broker port")] = 9092,
) -> None:
    """Embedded broker + topics + worker in one command; Ctrl-C stops everything."""
    from streams.broker import EmbeddedBroker
    from streams.worker import run_worker

    settings = _settings(brokers=f"127.0.0.1:{port}")
    _logging(settings)
    with EmbeddedBroker(port):
        run_worker(settings)


@app.command()
def classify(
    texts: Annotated[list[str], typer.Argument(help="texts to classify")],
    labels: Annotated[
        list[str] | None, typer.Option("--labels", "-l", help="candidate label (repeat)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name")] = None,
    classifier_id: Annotated[str | None, typer.Option(help="few-shot classifier id")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw response")] = False,
) -> None:
    """Produce a classify request and print the prediction when it arrives."""
    from streams.client import ShotstreamClient

    settings = _settings()
    if not labels and not classifier_id:
        raise typer.BadParameter("give --labels (zero-shot) or --classifier-id (few-shot)")

    async def go() -> dict[str, Any]:
        async with ShotstreamClient(settings) as client:
            return await client.classify(
                list(texts),
                labels=labels,
                model=model,
                classifier_id=classifier_id,
                timeout_s=timeout,
            )

    try:
        answer = asyncio.run(go())
    except TimeoutError:
        typer.echo(f"no answer within {timeout}s: is a worker running?", err=True)
        raise typer.Exit(3) from None
    _print_answer(answer, texts, as_json)
    if "error" in answer:
        raise typer.Exit(2)


def _print_answer(answer: dict[str, Any], texts: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    if "error" in answer:
        err = answer["error"]
        typer.echo(f"error {err['code']}: {err['detail']}", err=True)
        return
    from rich.console import Console
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
    console = Console()
    console.print(table)
    console.print(f"usage: {answer['usage']['total_tokens']} tokens")


@app.command()
def demo(
    port: Annotated[int | None, typer.Option(help="broker port (default: a free one)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for readiness")] = 300.0,
) -> None:
    """Quick start: embedded broker + worker, send the LLM-routing example, print answers."""
    from streams.broker import EmbeddedBroker
    from streams.client import ShotstreamClient
    from streams.processes import WorkerProcess

    port = port or free_port()
    logging.basicConfig(level=logging.WARNING)
    typer.echo(f"starting the embedded broker on 127.0.0.1:{port} ...")
    with EmbeddedBroker(port) as embedded:
        settings = _settings(brokers=embedded.address)
        log_path = settings.data_dir / "demo-worker.log"
        typer.echo(
            f"starting a worker (log: {log_path}; the first run converts the packaged "
            "model, ~20 s) ..."
        )
        with WorkerProcess({"SHOTSTREAM_BROKERS": embedded.address}, log_path) as worker_proc:
            worker_proc.wait_ready(timeout)
            typer.echo(
                f"worker ready; producing the routing example to {settings.topic('classify')} ..."
            )

            async def go() -> dict[str, Any]:
                async with ShotstreamClient(settings) as client:
                    return await client.classify(
                        ROUTING_INPUTS, labels=ROUTING_LABELS, model="jina-embeddings-v3"
                    )

            answer = asyncio.run(go())
            _print_answer(answer, ROUTING_INPUTS, as_json=False)


def main() -> None:
    app()
