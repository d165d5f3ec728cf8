"""User-facing error codes (Jina's where one fits) and the mapping from internal errors.

Internal code raises ordinary exceptions with their own types and messages; they are
mapped to a code here, at the edge, and the original message is kept as the detail.
"""

from __future__ import annotations

import math
from enum import StrEnum

from models.fewshot import ClassLimitError, NonFiniteInputError
from models.registry import ModelNotAvailableError
from models.runtime import LabelTooLongError


class ErrorCode(StrEnum):
    INPUT_INVALID = "INPUT_INVALID"
    """A field has the wrong type or value (the detail names the field)."""
    INPUT_MISSING = "INPUT_MISSING"
    """A required field is absent or empty (``input``, ``labels``)."""
    INPUT_NOT_UTF8 = "INPUT_NOT_UTF8"
    INPUT_NOT_JSON = "INPUT_NOT_JSON"
    INPUT_NOT_OBJECT = "INPUT_NOT_OBJECT"
    INPUT_LABEL_LIMIT_EXCEEDED = "INPUT_LABEL_LIMIT_EXCEEDED"
    INPUT_LIMIT_EXCEEDED = "INPUT_LIMIT_EXCEEDED"
    """More inputs than a request may carry."""
    INPUT_TOO_LONG = "INPUT_TOO_LONG"
    RECORD_UNREADABLE = "RECORD_UNREADABLE"
    """The record's batch could not be read: compressed with a codec the worker cannot
    decode, corrupt, or inflating past the batch limit. The detail says which."""
    AUTH_MISSING_API_KEY = "AUTH_MISSING_API_KEY"
    """Few-shot needs an ``authorization: Bearer <key>`` header; the record has none."""
    AUTH_INVALID_FORMAT = "AUTH_INVALID_FORMAT"
    """The ``authorization`` header is not ``Bearer <key>``."""
    AUTH_INVALID_API_KEY = "AUTH_INVALID_API_KEY"
    """The key is not one of the workers' keys."""
    AUTHZ_ACCESS_DENIED = "AUTHZ_ACCESS_DENIED"
    """A valid key that may not do this: training or deleting someone else's public
    classifier."""
    CLASSIFIER_NOT_FOUND = "CLASSIFIER_NOT_FOUND"
    AUTHZ_RESOURCE_LIMIT_EXCEEDED = "AUTHZ_RESOURCE_LIMIT_EXCEEDED"
    IMAGE_FETCH_FAILED = "IMAGE_FETCH_FAILED"
    IMAGE_INVALID = "IMAGE_INVALID"
    MODEL_NOT_AVAILABLE = "MODEL_NOT_AVAILABLE"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    """The answer is over the message size limit (``kafka.max_message_bytes`` or the
    broker's): fewer inputs or labels per request make it fit."""
    EMBEDDING_NOT_FINITE = "EMBEDDING_NOT_FINITE"
    """The model embedded an input or label to NaN or infinity (e.g. float16 overflow on
    a GPU): nothing is answered or learned from it."""
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    """The worker had no room for the request in time (its images among other requests'):
    the same request may succeed later. HTTP 503, as the gateway answers when Kafka is
    away."""
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """The record's ``shotstream-deadline`` header (the gateway's reply timeout) passed
    before the worker got to it: nothing was learned or computed, since the caller has
    stopped waiting (its retry must not learn the examples twice). HTTP 504."""
    INTERNAL_ERROR = "INTERNAL_ERROR"


class RequestError(Exception):
    """A request that cannot be answered, with the code and detail the caller sees."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id
        """The refused body's ``request_id``, where it could be read all the same (its dead
        letter carries it)."""
        self.retry_after_s = retry_after_s
        """How long the same request is expected to be refused, where the worker knows
        (an overloaded one): its dead letter's :data:`RETRY_AFTER_HEADER`."""


RETRY_AFTER_HEADER = "shotstream-retry-after"
"""A dead letter's header, where the worker knows when the same request may pass: whole
seconds (ASCII, at least 1), as HTTP's ``Retry-After``, which the gateway sets from it.
The dead letter's body keeps its fixed shape."""


def retry_after_headers(error: RequestError) -> list[tuple[str, bytes]]:
    """The dead letter's headers for ``error``: :data:`RETRY_AFTER_HEADER` or none."""
    if error.retry_after_s is None or not math.isfinite(error.retry_after_s):
        return []
    seconds = max(1, math.ceil(error.retry_after_s))
    return [(RETRY_AFTER_HEADER, str(seconds).encode("ascii"))]


class OversizeRecordError(ValueError):
    """A record over the message size limit: no retry can deliver it."""

    def __init__(self, size: int, limit: int, reason: str, what: str = "the answer") -> None:
        super().__init__(
            f"{what} is {size:,} bytes, over the {limit:,}-byte message limit ({reason})"
        )
        self.size = size
        self.limit = limit


def to_request_error(exc: BaseException) -> RequestError:
    """Map any exception raised while serving a request to a ``RequestError``."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ModelNotAvailableError):
        return RequestError(ErrorCode.MODEL_NOT_AVAILABLE, str(exc))
    if isinstance(exc, LabelTooLongError):
        return RequestError(ErrorCode.INPUT_TOO_LONG, str(exc))
    if isinstance(exc, ClassLimitError):
        return RequestError(ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED, str(exc))
    if isinstance(exc, NonFiniteInputError):
        return RequestError(ErrorCode.EMBEDDING_NOT_FINITE, f"{exc}; nothing was learned")
    if isinstance(exc, OversizeRecordError):
        return RequestError(
            ErrorCode.RESPONSE_TOO_LARGE,
            f"{exc}: send fewer inputs or labels per request, or raise "
            "SHOTSTREAM_KAFKA__MAX_MESSAGE_BYTES and the topics' max.message.bytes",
        )
    return RequestError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
