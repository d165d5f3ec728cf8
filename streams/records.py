"""Topic records: parsing and validating request bodies, building response bodies.

The same parsers serve the Kafka agents and the HTTP gateway, so a body means the same
thing on both. Bodies are Jina's ``/v1/classify`` JSON plus ``request_id`` (DESIGN.md);
unknown fields are ignored, as Jina does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import unicodedata
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from models.batching import DEADLINE, Overloaded, Unreachable
from state.classifiers import as_spelled
from streams.auth import header_value
from streams.errors import ErrorCode, RequestError
from streams.settings import LimitSettings


@dataclass(frozen=True, slots=True)
class TextInput:
    text: str


@dataclass(frozen=True, slots=True)
class ImageInput:
    image: str
    """An https URL, base64 data, or a ``data:`` URI."""


InputItem = TextInput | ImageInput


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """A validated classify request: zero-shot (labels) or few-shot (classifier_id)."""

    request_id: str
    inputs: tuple[InputItem, ...]
    model: str | None = None
    labels: tuple[str, ...] | None = None
    label_groups: Mapping[str, tuple[str, ...]] | None = None
    classifier_id: str | None = None

    @property
    def all_labels(self) -> tuple[str, ...]:
        """Every distinct label of the request, flat and groups alike, in order."""
        if self.label_groups is not None:
            return tuple(dict.fromkeys(lb for g in self.label_groups.values() for lb in g))
        return self.labels or ()


def decode_json_object(
    raw: bytes | str | Mapping[str, Any] | None, headers: Any = ()
) -> dict[str, Any]:
    """Bytes from a topic → a JSON object, or a precise ``RequestError``."""
    if raw is None:
        unreadable = header_value(headers, UNREADABLE_HEADER)
        if unreadable is not None:
            raise RequestError(
                ErrorCode.RECORD_UNREADABLE,
                f"the record's batch could not be read: {bytes(unreadable).decode()}",
            )
        raise RequestError(ErrorCode.INPUT_MISSING, "record has no value (a tombstone)")
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        body = orjson.loads(raw)  # strict RFC 8259: no NaN/Infinity, no BOM
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes):  # which of the two it is, on the slow path only
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise RequestError(ErrorCode.INPUT_NOT_UTF8, f"value is not UTF-8: {bad}") from bad
        if "surrogate in string" in str(exc):
            # JSON's grammar allows an escaped lone surrogate; Unicode text does not. The
            # gateway's code for it (its JSON reader takes it, the Kafka producer not)
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"a string holds a lone surrogate escape, which is not Unicode text ({exc})",
                request_id=_request_id_anyway(raw),
            ) from exc
        raise RequestError(ErrorCode.INPUT_NOT_JSON, f"value is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError(
            ErrorCode.INPUT_NOT_OBJECT,
            f"value must be a JSON object, got {_json_type(body)}",
        )
    if isinstance(body.get("request_id"), float):
        # orjson reads an integer beyond 64 bits as a float; the standard parser keeps
        # it exact, so a numeric request_id is echoed digit for digit (rare: slow path)
        try:
            exact: dict[str, Any] = json.loads(raw)
        except RecursionError as exc:  # orjson allows deeper nesting than json does
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                "a numeric request_id beyond 64 bits needs a body nested less deeply; "
                "send the request_id as a string",
            ) from exc
        return exact
    return body


def _request_id_anyway(raw: bytes | str) -> str | None:
    """The ``request_id`` of a body refused for a lone surrogate escape elsewhere in it,
    read by the standard parser (which takes them), so that its dead letter carries the id
    its producer waits for; ``None`` if there is none that is Unicode text."""
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            return None
        rid = request_id_of(body, None)  # its checks: a string or an integer, not empty
        rid.encode("utf-8")  # a surrogate in the id itself raises
    except (ValueError, RecursionError, RequestError):  # UnicodeEncodeError is a ValueError
        return None
    return rid


def request_id_of(body: Mapping[str, Any], key: bytes | str | None) -> str:
    """``request_id`` from the body, else the record key (which must then be UTF-8: a key
    with its bad bytes replaced would answer under an id its producer never sent, and
    different keys under one id)."""
    rid = body.get("request_id")
    if (rid is None or rid == "") and key is not None:
        try:
            rid = key.decode("utf-8") if isinstance(key, bytes) else key
        except UnicodeDecodeError as exc:
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"the record key, the request's id without a body request_id, is not "
                f"UTF-8 ({exc.reason}): give the body a request_id",
            ) from exc
    if rid is None or rid == "":
        raise RequestError(ErrorCode.INPUT_MISSING, "request_id is missing (body or record key)")
    if not isinstance(rid, str | int) or isinstance(rid, bool):
        raise RequestError(ErrorCode.INPUT_INVALID, "request_id must be a string")
    return str(rid)


def parse_classify(
    body: Mapping[str, Any], limits: LimitSettings, *, request_id: str
) -> ClassifyRequest:
    """Validate a classify body (already decoded) against the limits."""
    inputs = parse_inputs(body.get("input"), limits)
    model = _optional_str(body, "model")
    classifier_id = _checked_id(_optional_str(body, "classifier_id"), "classifier_id")
    if classifier_id is not None:
        return ClassifyRequest(request_id, inputs, model=model, classifier_id=classifier_id)
    raw_labels = body.get("labels")
    if raw_labels is None:
        raise RequestError(
            ErrorCode.INPUT_MISSING,
            "labels are missing (zero-shot needs labels, few-shot a classifier_id)",
        )
    if isinstance(raw_labels, Mapping):
        groups = _parse_groups(raw_labels, limits)
        return ClassifyRequest(request_id, inputs, model=model, label_groups=groups)
    labels = _parse_label_list(raw_labels, "labels")
    if len(labels) > limits.max_labels:
        raise RequestError(
            ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED,
            f"{len(labels)} labels given, at most {limits.max_labels} allowed",
        )
    return ClassifyRequest(request_id, inputs, model=model, labels=labels)


def parse_inputs(raw: object, limits: LimitSettings) -> tuple[InputItem, ...]:
    """``input``: a string, ``{"text"}``, ``{"image"}``, or a list of them."""
    return tuple(_parse_item(item, i) for i, item in enumerate(_input_list(raw, limits)))


def _input_list(raw: object, limits: LimitSettings) -> list[object]:
    """``input`` as a non-empty list within the input limit."""
    if raw is None:
        raise RequestError(ErrorCode.INPUT_MISSING, "input is missing")
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise RequestError(ErrorCode.INPUT_MISSING, "input is empty")
    if len(items) > limits.max_inputs:
        raise RequestError(
            ErrorCode.INPUT_LIMIT_EXCEEDED,
            f"{len(items)} inputs given, at most {limits.max_inputs} allowed",
        )
    return items


def _parse_item(item: object, index: int) -> InputItem:
    if isinstance(item, str):
        return TextInput(item)
    if isinstance(item, Mapping):
        if "text" in item and "image" in item:  # which was meant? the other was dropped
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"input[{index}] has both 'text' and 'image': one item is one or the other",
            )
        if "text" in item and isinstance(item["text"], str):
            return TextInput(item["text"])
        if "image" in item and isinstance(item["image"], str):
            return ImageInput(item["image"])
        raise RequestError(
            ErrorCode.INPUT_INVALID,
            f"input[{index}] must have a string 'text' or 'image' field",
        )
    raise RequestError(
        ErrorCode.INPUT_INVALID,
        f"input[{index}] must be a string or an object with 'text' or 'image', "
        f"got {_json_type(item)}",
    )


def _parse_label_list(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise RequestError(
            ErrorCode.INPUT_INVALID,
            f"{where} must be a list of strings or an object of groups, got {_json_type(raw)}",
        )
    for i, label in enumerate(raw):
        if not isinstance(label, str) or blank(label):
            raise RequestError(ErrorCode.INPUT_INVALID, f"{where}[{i}] must be a non-empty string")
    # Jina accepts repeated labels; each counts once, in its first spelling (another
    # Unicode form of it, NFC or NFD "café", is the same label: the model reads them alike)
    labels = tuple(dict.fromkeys(as_spelled((), raw)))
    if not labels:
        raise RequestError(ErrorCode.INPUT_MISSING, f"{where} is empty")
    return labels


def blank(label: str) -> bool:
    r"""Whether a label shows nothing: only whitespace, control or format characters (a
    zero-width space, U+200B, is not whitespace to ``str.strip``, and NUL is not either).

    >>> blank(" \u200b\t"), blank("\x00"), blank("a\u200b")
    (True, True, False)
    """
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in label)


def _parse_groups(raw: Mapping[str, object], limits: LimitSettings) -> dict[str, tuple[str, ...]]:
    if not raw:
        raise RequestError(ErrorCode.INPUT_MISSING, "labels is an empty object")
    if len(raw) > limits.max_label_groups:
        raise RequestError(
            ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED,
            f"{len(raw)} label groups given, at most {limits.max_label_groups} allowed",
        )
    groups: dict[str, tuple[str, ...]] = {}
    for name, labels in raw.items():
        parsed = _parse_label_list(labels, f"labels[{name!r}]")
        if len(parsed) > limits.max_labels_per_group:
            raise RequestError(
                ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED,
                f"group {name!r} has {len(parsed)} labels, at most "
                f"{limits.max_labels_per_group} allowed",
            )
        groups[str(name)] = parsed
    return groups


def _optional_str(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RequestError(ErrorCode.INPUT_INVALID, f"{field} must be a non-empty string")
    return value


def _json_type(value: object) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class TrainExample:
    item: InputItem
    label: str


@dataclass(frozen=True, slots=True)
class TrainRequest:
    """Create (first request for an id, needs ``model``) or update a few-shot classifier."""

    request_id: str
    classifier_id: str
    examples: tuple[TrainExample, ...]
    model: str | None = None
    access: str | None = None
    num_iters: int = 10
    create: bool = True
    """Whether an unknown ``classifier_id`` may be created (with ``model``); ``False``: an
    update only, and an unknown id is ``CLASSIFIER_NOT_FOUND``, not a new classifier."""


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """``{"action": "delete"}`` on the train topic: the owner removes a classifier."""

    request_id: str
    classifier_id: str


@dataclass(frozen=True, slots=True)
class UsageRequest:
    """``{"action": "usage", "count": n, "used_at": t}`` on the train topic: a worker reports
    how many few-shot classify requests it answered with a classifier since its last report
    (``streams.usage``), for the owner of the classifier's partition to add to the record."""

    request_id: str
    classifier_id: str
    count: int
    used_at: float


ACCESS_LEVELS = ("private", "public")
MAX_NUM_ITERS = 1000
MAX_CLASSIFIER_ID_CHARS = 256
"""A classifier id is a key and part of every few-shot answer: a UUID has 36."""
MAX_TRAIN_LABEL_CHARS = 1024
"""A few-shot label is stored in the classifier and listed in every answer."""


def _checked_id(value: str | None, name: str) -> str | None:
    """``value``, refused when it is longer than a classifier id may be."""
    if value is not None and len(value) > MAX_CLASSIFIER_ID_CHARS:
        raise RequestError(
            ErrorCode.INPUT_INVALID,
            f"{name} is {len(value):,} characters long, over {MAX_CLASSIFIER_ID_CHARS}",
        )
    return value


def parse_train(
    body: Mapping[str, Any], limits: LimitSettings, *, request_id: str, key: bytes | None
) -> TrainRequest | DeleteRequest | UsageRequest:
    """Validate a train body (Jina's ``/v1/train`` plus ``request_id``, a delete, or a
    worker's usage report)."""
    classifier_id = _checked_id(_optional_str(body, "classifier_id"), "classifier_id")
    keyed = None
    if key is not None:
        try:
            keyed = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            # replacing the bad bytes would give different keys, on different partitions,
            # one classifier id: two workers would update it at once
            raise RequestError(
                ErrorCode.INPUT_INVALID, f"the record key is not UTF-8 ({exc.reason})"
            ) from exc
        _checked_id(keyed, "the record key")
    if classifier_id is None:
        classifier_id = keyed
    elif keyed is not None and keyed != classifier_id:
        # the key picks the partition, and one partition must see all of a classifier's
        # updates, in order: a body naming another classifier would be applied out of turn
        raise RequestError(
            ErrorCode.INPUT_INVALID,
            f"classifier_id {classifier_id!r} differs from the record key {keyed!r} "
            "(the key of a train record is its classifier_id)",
        )
    if not classifier_id:
        raise RequestError(ErrorCode.INPUT_MISSING, "classifier_id is missing (body or key)")
    action = body.get("action")
    if action is None:  # absent or null, as for every optional field
        action = "train"
    if action == "delete":
        return DeleteRequest(request_id, classifier_id)
    if action == "usage":
        count, used_at = body.get("count"), body.get("used_at")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 2**31:
            raise RequestError(
                ErrorCode.INPUT_INVALID, "a usage report's count must be 1 to 2,147,483,648"
            )
        if (
            isinstance(used_at, bool)
            or not isinstance(used_at, int | float)
            or not 0 <= used_at < math.inf
        ):
            raise RequestError(ErrorCode.INPUT_INVALID, "a usage report needs a time 'used_at'")
        return UsageRequest(request_id, classifier_id, count, float(used_at))
    if action != "train":
        raise RequestError(
            ErrorCode.INPUT_INVALID, "action must be 'train' or 'delete' (or a worker's 'usage')"
        )
    examples = []
    for index, item in enumerate(_input_list(body.get("input"), limits)):
        label = item.get("label") if isinstance(item, Mapping) else None
        if not isinstance(label, str) or blank(label):
            raise RequestError(
                ErrorCode.INPUT_INVALID, f"input[{index}] needs a non-empty string 'label'"
            )
        if len(label) > MAX_TRAIN_LABEL_CHARS:
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"input[{index}].label is {len(label):,} characters long, over "
                f"{MAX_TRAIN_LABEL_CHARS}",
            )
        examples.append(TrainExample(_parse_item(item, index), label))
    access = _optional_str(body, "access")
    if access is not None and access not in ACCESS_LEVELS:
        raise RequestError(ErrorCode.INPUT_INVALID, "access must be 'private' or 'public'")
    num_iters = body.get("num_iters")
    if num_iters is None:  # absent or null (clients that write every optional field)
        num_iters = 10
    if (
        not isinstance(num_iters, int)
        or isinstance(num_iters, bool)
        or not 1 <= num_iters <= MAX_NUM_ITERS
    ):
        raise RequestError(
            ErrorCode.INPUT_INVALID, f"num_iters must be an integer from 1 to {MAX_NUM_ITERS}"
        )
    create = body.get("create")
    if create is None:
        create = True
    if not isinstance(create, bool):
        raise RequestError(ErrorCode.INPUT_INVALID, "create must be true or false")
    return TrainRequest(
        request_id,
        classifier_id,
        tuple(examples),
        model=_optional_str(body, "model"),
        access=access,
        num_iters=num_iters,
        create=create,
    )


# -- outgoing records -----------------------------------------------------------------


def dead_letter(
    *,
    request_id: str | None,
    error: RequestError,
    topic: str,
    partition: int,
    offset: int,
    payload: bytes | None,
    keep: int | None = None,
) -> dict[str, Any]:
    """The DESIGN.md dead-letter record (payload as text, or base64 if not UTF-8).

    ``keep`` cuts the payload to its first ``keep`` bytes (at a character boundary when it
    is text) and adds ``payload_bytes``, the original length.
    """
    text: str | None = None
    utf8 = payload is None or _is_utf8(payload)
    if payload is not None:
        kept = payload if keep is None or keep >= len(payload) else payload[: max(keep, 0)]
        # "ignore": a cut may split a character
        text = kept.decode("utf-8", "ignore") if utf8 else base64.b64encode(kept).decode("ascii")
    record: dict[str, Any] = {
        "request_id": request_id,
        "error": {"code": str(error.code), "detail": error.detail},
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "payload": text,
    }
    if not utf8:
        record["payload_encoding"] = "base64"
    if payload is not None and keep is not None and keep < len(payload):
        record["payload_bytes"] = len(payload)
    return record


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


MILLISECONDS_FROM = 1e11
"""A deadline this large in seconds is in the year 5138: a time in milliseconds (2001 on),
which read as seconds was no deadline at all."""
UNREADABLE_HEADER = "shotstream-unreadable"
"""Set by the worker's record reader on a record it could not read (streams.lenient_records):
why. Such a record has no key and no value."""
DEADLINE_HEADER = "shotstream-deadline"
"""A request record's optional header: when its caller stops waiting, in seconds since
the epoch (ASCII digits, e.g. ``1795000000.250``). The gateway sets it to its reply
timeout; a worker that gets to the record later answers ``DEADLINE_EXCEEDED`` instead of
doing the work. Producers' and workers' clocks must agree (NTP)."""


def deadline_of(headers: Any) -> float | None:
    """The record's deadline (:data:`DEADLINE_HEADER`), ``None`` without one.

    >>> deadline_of([("shotstream-deadline", b"1795000000.25")]), deadline_of([])
    (1795000000.25, None)
    """
    raw = header_value(headers, DEADLINE_HEADER, null=b"")
    if raw is None:
        return None
    try:
        deadline = float(bytes(raw).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        deadline = math.nan
    if not math.isfinite(deadline):
        given = repr(bytes(raw)[:64]) if raw else "an empty or null value"
        raise RequestError(
            ErrorCode.INPUT_INVALID,
            f"header {DEADLINE_HEADER} must be a time in seconds since the epoch, not {given}",
        )
    if deadline > MILLISECONDS_FROM:  # Kafka's own timestamps are milliseconds
        raise RequestError(
            ErrorCode.INPUT_INVALID,
            f"header {DEADLINE_HEADER} must be in seconds since the epoch; "
            f"{deadline:.0f} looks like milliseconds (year 5138 and later as seconds)",
        )
    return deadline


def is_late(deadline: float | None) -> bool:
    """Whether ``deadline`` (:func:`deadline_of`) has passed; never without one."""
    return deadline is not None and time.time() > deadline


T = TypeVar("T")


async def before_deadline(work: Awaitable[T], deadline: float | None) -> T:
    """``work``, cancelled if ``deadline`` (:func:`deadline_of`) passes first, then
    ``DEADLINE_EXCEEDED``. A request's inputs still queued for the model are then skipped,
    not embedded: checked only when a worker took the record, a saturated worker (about
    13 s from taking a record to answering it on 2 cores) computed, under a backlog,
    nearly every request in its last seconds and answered it after its caller gave up.
    Also ``DEADLINE_EXCEEDED`` at once when the model's queue would keep the inputs past
    the deadline (:data:`models.batching.DEADLINE`), and ``SERVICE_UNAVAILABLE`` when it
    would keep them longer than the worker's ``max_queue_wait_s``."""
    if deadline is None:
        return await work
    token = DEADLINE.set(deadline)  # seen by the batcher's submit (and tasks made inside)
    try:
        async with asyncio.timeout(deadline - time.time()) as scope:
            return await work
    except TimeoutError:
        if not scope.expired():  # the work's own timeout, not the caller's deadline
            raise
    except Unreachable as exc:
        raise RequestError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the request could not be answered before its deadline ({DEADLINE_HEADER}), "
            f"{exc.left_s:.1f} s away: the inputs queued for the model ahead of it take about "
            f"{exc.wait_s:.1f} s, so it was not computed (its caller would have stopped waiting)",
        ) from None
    except Overloaded as exc:
        raise RequestError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"the worker is overloaded: the inputs queued for the model ahead of the request "
            f"take about {exc.wait_s:.1f} s, more than its limit of {exc.limit_s:g} s "
            "(SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S), so it was not computed; retry later",
            # until the queue is down to the limit, were nothing more to come
            retry_after_s=exc.wait_s - exc.limit_s,
        ) from None
    finally:
        DEADLINE.reset(token)
    raise RequestError(
        ErrorCode.DEADLINE_EXCEEDED,
        f"the request's deadline ({DEADLINE_HEADER}) passed while it waited for the model, "
        "so it was not computed further: its caller had stopped waiting",
    )


def refuse_late(deadline: float | None) -> None:
    """Refuse a request whose caller has stopped waiting (``DEADLINE_EXCEEDED``)."""
    if deadline is None:
        return
    late = time.time() - deadline
    if late > 0:
        raise RequestError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the request's deadline ({DEADLINE_HEADER}) passed {late:.1f} s before a "
            "worker got to it, so it was not served (nothing was learned): its caller had "
            "stopped waiting",
        )
