"""The client commands' exit codes against the real broker and worker: 0 for a prediction,
2 for a dead letter (printed), 3 when no answer comes in time (README "Quick start")."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from streams.broker import EmbeddedBroker
from streams.cli import EXIT_DEAD_LETTER, EXIT_NO_ANSWER, app
from streams.processes import WorkerProcess
from streams.settings import Settings
from streams.worker import prepare_broker
from tests.integration.conftest import API_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.model]


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Exit code and standard output (the JSON answer; messages go to standard error)."""
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.stdout if result.exit_code in (0, 2) else result.output


def test_a_prediction_exits_0_and_a_dead_letter_exits_2(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    env = {"SHOTSTREAM_BROKERS": broker.address}
    code, output = run(
        ["classify", "--json", "-l", "sport", "-l", "cooking", "the striker scored twice"], env
    )
    assert code == 0, output
    answer = json.loads(output)
    assert answer["data"][0]["prediction"] == "sport"

    # label groups (the CLI could send a flat list only): one prediction per group
    code, output = run(
        ["classify", "--json", "-g", "topic=sport,cooking", "-g", "mood=happy, sad",
         "the striker scored twice"], env,
    )  # fmt: skip
    assert code == 0, output
    [item] = json.loads(output)["data"]
    assert item["prediction"]["topic"] == "sport"
    assert set(item["score"]) == {"topic", "mood"}

    code, output = run(["classify", "--json", "-l", "a", "-l", "b", "--model", "nope", "x"], env)
    assert code == EXIT_DEAD_LETTER, output
    letter = json.loads(output)
    assert letter["error"]["code"] == "MODEL_NOT_AVAILABLE"

    # few-shot: someone else's (or nobody's) classifier is a dead letter too
    code, output = run(
        ["classify", "--json", "--classifier-id", "no-such-classifier", "x"],
        {**env, "SHOTSTREAM_API_KEY": API_KEYS["alice"]},
    )
    assert code == EXIT_DEAD_LETTER, output
    assert json.loads(output)["error"]["code"] == "CLASSIFIER_NOT_FOUND"


def test_no_worker_on_the_topics_exits_3_after_the_timeout(broker: EmbeddedBroker) -> None:
    """Topics that exist but that no worker consumes: the request is produced and nothing
    answers it."""
    prefix = "nobody-listens."
    settings = Settings(brokers=broker.address, topic_prefix=prefix, kafka={"group_id": "nobody"})
    asyncio.run(prepare_broker(settings))
    env = {"SHOTSTREAM_BROKERS": broker.address, "SHOTSTREAM_TOPIC_PREFIX": prefix}
    code, output = run(["classify", "--timeout", "3", "-l", "a", "-l", "b", "x"], env)
    assert code == EXIT_NO_ANSWER, output
    assert "no answer within 3 s" in output
    assert "Traceback" not in output


def test_a_train_topic_partitioned_unlike_its_changelog_stops_the_worker_at_start(
    broker: EmbeddedBroker,
) -> None:
    """A classifier's state lives in the changelog partition of its train partition: with
    the counts apart (the train topic widened), half the ids would train in a table that
    does not hold them. The worker refuses to start (exit 2) and says why."""
    from streams.app import classifier_changelog_topic
    from streams.broker import ensure_topics
    from streams.worker import TopicLayoutError

    prefix = "widened."
    settings = Settings(brokers=broker.address, topic_prefix=prefix, kafka={"group_id": "widened"})
    changelog = classifier_changelog_topic(settings)
    asyncio.run(ensure_topics([broker.address], [changelog], 2, compacted=[changelog]))
    asyncio.run(ensure_topics([broker.address], [settings.topic("train")], 3))
    with pytest.raises(TopicLayoutError, match=r"widened\.train has 3 partitions .* has 2"):
        asyncio.run(prepare_broker(settings))
    env = {
        "SHOTSTREAM_BROKERS": broker.address,
        "SHOTSTREAM_TOPIC_PREFIX": prefix,
        "SHOTSTREAM_KAFKA__GROUP_ID": "widened",
    }
    result = CliRunner().invoke(app, ["worker"], env=env)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(
    ("configs", "refused"),
    [
        ({}, True),  # Kafka's default: cleanup.policy=delete, 7 days
        ({"cleanup.policy": "compact,delete", "retention.ms": "86400000"}, True),
        ({"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}, False),
        ({"cleanup.policy": "compact"}, False),
    ],
)
def test_a_classifier_changelog_that_kafka_empties_by_age_stops_the_worker_at_start(
    broker: EmbeddedBroker, configs: dict[str, str], refused: bool
) -> None:
    """An admin who makes the topics beforehand (workers without CREATE) may make the
    changelog with Kafka's defaults: the worker started, and every classifier not updated
    within the retention was gone the next time its partition was restored."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.app import classifier_changelog_topic
    from streams.worker import TopicLayoutError

    name = f"kept-{len(configs)}-{refused}".lower()
    settings = Settings(brokers=broker.address, topic_prefix=f"{name}.", kafka={"group_id": name})
    changelog = classifier_changelog_topic(settings)

    async def make() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(changelog, settings.partitions, 1, topic_configs=configs)]
            )
        finally:
            await admin.close()

    asyncio.run(make())
    if not refused:
        asyncio.run(prepare_broker(settings))
        return
    with pytest.raises(TopicLayoutError, match=rf"{changelog} has cleanup.policy=.*compacted only"):
        asyncio.run(prepare_broker(settings))


def test_topics_are_created_with_the_configured_retention_and_size(
    broker: EmbeddedBroker,
) -> None:
    """What the worker asks of the topics it creates is what the broker keeps: retention on
    the request and answer topics (they hold callers' texts and keys), none on the
    compacted changelog, and the record size limit on all."""
    from streams.app import classifier_changelog_topic
    from streams.broker import topic_configs
    from streams.settings import TOPICS

    settings = Settings(
        brokers=broker.address,
        topic_prefix="retained.",
        kafka={"group_id": "retained", "retention_ms": 3_600_000},
    )
    asyncio.run(prepare_broker(settings))

    changelog = classifier_changelog_topic(settings)
    topics = [*(settings.topic(t) for t in TOPICS), changelog]
    found = asyncio.run(topic_configs([broker.address], topics))
    size = str(settings.kafka.max_message_bytes)
    for topic in TOPICS:
        assert found[settings.topic(topic)] == {
            "retention.ms": "3600000",
            "max.message.bytes": size,
        }
    assert found[changelog] == {"cleanup.policy": "compact", "max.message.bytes": size}


def test_a_partition_count_the_topics_do_not_have_is_warned_about(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """SHOTSTREAM_PARTITIONS applies to the topics a worker creates: one raised later
    would otherwise leave the added workers idle without a word."""
    from streams.broker import ensure_topics

    settings = Settings(
        brokers=broker.address, topic_prefix="narrow.", partitions=4, kafka={"group_id": "narrow"}
    )
    asyncio.run(ensure_topics([broker.address], [settings.topic("classify")], 2))
    with caplog.at_level("WARNING", logger="shotstream.worker"):
        asyncio.run(prepare_broker(settings))
    warned = [
        r.getMessage() for r in caplog.records if "SHOTSTREAM_PARTITIONS says" in r.getMessage()
    ]
    assert warned == [
        "topic narrow.classify has 2 partitions, SHOTSTREAM_PARTITIONS says 4: it applies only "
        "to topics shotstream creates (existing ones keep theirs, so at most 2 workers share "
        "this one)"
    ]


def test_a_topic_taking_smaller_records_than_the_workers_produce_is_warned_about(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Topics made beforehand with Kafka's default max.message.bytes (1 MB) refuse large
    answers (RESPONSE_TOO_LARGE dead letters) and requests (413): nothing said so at
    start. The topics the worker creates take SHOTSTREAM_KAFKA__MAX_MESSAGE_BYTES."""
    from streams.broker import ensure_topics

    settings = Settings(brokers=broker.address, topic_prefix="small.", kafka={"group_id": "small"})
    predictions = settings.topic("predictions")
    asyncio.run(
        ensure_topics(
            [broker.address], [predictions], settings.partitions, max_message_bytes=1048576
        )
    )
    with caplog.at_level("WARNING", logger="shotstream.worker"):
        asyncio.run(prepare_broker(settings))
    warned = [r.getMessage() for r in caplog.records if "max.message.bytes=" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith(
        "topic small.predictions takes records up to max.message.bytes=1048576, below "
        f"SHOTSTREAM_KAFKA__MAX_MESSAGE_BYTES={settings.kafka.max_message_bytes}:"
    )


def test_a_gateway_that_cannot_start_says_why_in_one_line(broker: EmbeddedBroker) -> None:
    """Kafka away, or up with no worker yet to create the topics: the gateway waited its
    startup timeout, then printed uvicorn's traceback blaming the topics in both cases
    and exited 3 (the clients' 'no answer in time'). Now one line each, exit 4."""
    from streams.cli import EXIT_NO_KAFKA

    env = {
        "SHOTSTREAM_API_KEYS": "k",
        "SHOTSTREAM_HTTP_PORT": "0",  # any free port: it is never served
        "SHOTSTREAM_GATEWAY__STARTUP_TIMEOUT_S": "2",
        "SHOTSTREAM_TOPIC_PREFIX": "no-worker-yet.",
    }
    for brokers, cause in (
        ("127.0.0.1:1", "no answer from Kafka at 127.0.0.1:1"),
        (broker.address, "a worker creates the topics, start one first"),
    ):
        result = CliRunner().invoke(app, ["gateway"], env={**env, "SHOTSTREAM_BROKERS": brokers})
        assert result.exit_code == EXIT_NO_KAFKA, result.output
        assert cause in result.output
        assert "waited 2 s, SHOTSTREAM_GATEWAY__STARTUP_TIMEOUT_S" in result.output
        assert "Traceback" not in result.output


def test_a_gateway_without_the_classifier_listing_says_why_in_one_line(
    broker: EmbeddedBroker,
) -> None:
    """Topics made beforehand (for workers without CREATE) but not the changelog: the
    gateway's check passed, then its classifier listing waited a second startup timeout
    inside uvicorn's lifespan and ended in a traceback, exit 3. Now one line, exit 4."""
    from streams.broker import ensure_topics
    from streams.cli import EXIT_NO_KAFKA
    from streams.settings import TOPICS

    prefix = "listing-missing."
    topics = [f"{prefix}{t}" for t in TOPICS]
    asyncio.run(ensure_topics([broker.address], topics, partitions=1))
    env = {
        "SHOTSTREAM_API_KEYS": "k",
        "SHOTSTREAM_BROKERS": broker.address,
        "SHOTSTREAM_HTTP_PORT": "0",
        "SHOTSTREAM_GATEWAY__STARTUP_TIMEOUT_S": "2",
        "SHOTSTREAM_TOPIC_PREFIX": prefix,
        "SHOTSTREAM_KAFKA__GROUP_ID": "listing-missing",  # its changelog: never made
    }
    result = CliRunner().invoke(app, ["gateway"], env=env)
    assert result.exit_code == EXIT_NO_KAFKA, result.output
    assert "listing-missing-classifiers-changelog does not exist" in result.output
    assert "waited 2 s, SHOTSTREAM_GATEWAY__STARTUP_TIMEOUT_S" in result.output
    assert "Traceback" not in result.output


def test_a_kafka_without_the_topics_is_told_apart_from_one_out_of_reach(
    broker: EmbeddedBroker,
) -> None:
    """Kafka up, no worker yet (the README's own first steps): with a --timeout under the
    client's 5 s topic lookup, the commands said "cannot connect to Kafka", which answered;
    past it, "is a worker running? (has a worker run against it?)"."""
    from streams.cli import EXIT_NO_KAFKA

    env = {
        "SHOTSTREAM_BROKERS": broker.address,
        "SHOTSTREAM_API_KEY": "k",
        "SHOTSTREAM_TOPIC_PREFIX": "no-topics-yet.",
        "SHOTSTREAM_KAFKA__GROUP_ID": "no-topics-yet",
    }
    for args in (["classify", "-l", "a", "x"], ["classifiers", "list"]):
        code, output = run([*args, "--timeout", "2"], env)
        assert code == EXIT_NO_KAFKA, (args, output)
        assert f"Kafka at {broker.address} answered, but shotstream's topics were not" in output
        assert "cannot connect" not in output
    code, output = run(["classify", "-l", "a", "x"], env)
    assert code == EXIT_NO_KAFKA, output
    assert "topic no-topics-yet.predictions not found: a worker makes them" in output
