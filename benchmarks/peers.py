"""Hand-written peers: the consumer loop one would write without shotstream.

Each record is parsed, its text and its labels are tokenized and embedded with the
encoder object the raw benchmark uses (labels again for every record: no cache), the
softmax over cosines is taken (``models.scoring``) and the answer is produced. The
model runs on the loop's own thread, blocking it, as such naive code does.

* ``batch=1`` (f1): one record at a time.
* ``batch=32`` (f2): ``getmany(max_records=32)``; the texts of the batch are embedded
  in one call and the labels of all its records (repeated per record) in another.

A peer runs on its own thread with its own event loop, so that its blocking compute
does not stall the load generator's clocks on the main thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.embedders import TextEncoder
from models.scoring import ranked, zero_shot_probabilities


class NaivePeer:
    """A consume → embed → score → produce loop on ``<prefix>classify``.

    Parameters
    ----------
    encoder
        The loaded model (shared with the raw benchmark).
    brokers, prefix, group_id
        Where it reads (``<prefix>classify``, in its own consumer group) and writes
        (``<prefix>predictions``).
    batch
        Records taken per poll.
    temperature
        Softmax temperature (shotstream's default, for like-for-like answers).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        *,
        brokers: str,
        prefix: str,
        group_id: str,
        batch: int,
        temperature: float,
    ) -> None:
        self.encoder = encoder
        self.brokers = brokers
        self.prefix = prefix
        self.group_id = group_id
        self.batch = batch
        self.temperature = temperature
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"peer-{batch}", daemon=True)
        self._failure: BaseException | None = None

    def start(self) -> NaivePeer:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the loop; re-raise what made it fail, if anything."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._failure is not None:
            raise RuntimeError(f"peer (batch {self.batch}) failed") from self._failure

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failure = exc

    async def _serve(self) -> None:
        consumer = AIOKafkaConsumer(
            f"{self.prefix}classify",
            bootstrap_servers=self.brokers,
            group_id=self.group_id,
            auto_offset_reset="earliest",
            # the embedded broker holds a join for half the session timeout
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.brokers)
        await consumer.start()
        await producer.start()
        answers = f"{self.prefix}predictions"
        try:
            while not self._stop.is_set():
                polled = await consumer.getmany(timeout_ms=100, max_records=self.batch)
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    continue
                bodies = [json.loads(r.value) for r in records]
                for body in self.answer(bodies):
                    rid = str(body["request_id"])
                    await producer.send(answers, json.dumps(body).encode(), key=rid.encode())
        finally:
            await consumer.stop()
            await producer.stop()

    def answer(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answers to ``bodies`` (blocking: the model runs right here)."""
        enc = self.encoder
        texts = [str(b["input"][0]) for b in bodies]
        labels = [[str(label) for label in b["labels"]] for b in bodies]
        text_vectors = enc.embed_ids(enc.tokenize(texts))
        label_vectors = enc.embed_ids(enc.tokenize([lb for group in labels for lb in group]))
        out, start = [], 0
        for i, body in enumerate(bodies):
            own = label_vectors[start : start + len(labels[i])]
            start += len(labels[i])
            probs = zero_shot_probabilities(text_vectors[i : i + 1], own, self.temperature)[0]
            order = ranked(labels[i], probs)
            out.append(
                {
                    "request_id": body["request_id"],
                    "data": [
                        {
                            "object": "classification",
                            "index": 0,
                            "prediction": order[0][0],
                            "score": order[0][1],
                            "predictions": [{"label": lb, "score": s} for lb, s in order],
                        }
                    ],
                }
            )
        return out
