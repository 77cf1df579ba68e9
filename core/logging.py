"""structlog setup: key-value lines on a terminal, JSON in production (``ORDERSYNC_LOG_JSON``).

Nothing a buyer typed may reach a log line, whoever logs it:

- a processor drops values of keys that may hold secrets or customer data;
- exceptions are logged as :func:`redacted_error` (the class, and the message only where the
  class vouches for it) and tracebacks as :func:`redacted_traceback` (where, not what), both in
  structlog's events and in every record of the standard library's logging (Celery's, uvicorn's),
  which a log record factory redacts as it is made, before any handler sees it.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "redacted_error", "redacted_message", "redacted_traceback"]

_REDACT = ("secret", "token", "password", "authorization", "hmac", "signature", "email",
           "phone", "address", "credentials", "api_key")  # fmt: skip


def redacted_message(exc: BaseException, limit: int = 500) -> str | None:
    """The part of an exception's text a log line may show, or None.

    Only a class that sets ``log_safe_message = True`` vouches for its message (the error tree
    of ``domain.errors``: operation, status and remote code, never customer data). Any other
    text may quote what a buyer typed: a UnicodeEncodeError holds the whole string it failed on
    (a carrier request with name and address), a pydantic or database error the input values, a
    Celery Retry or ChordError the repr of another exception. Of a Unicode error, the codec and
    the reason are fixed texts and are kept.
    """
    if getattr(exc, "log_safe_message", False) is True:
        return str(exc)[:limit]
    if isinstance(exc, UnicodeEncodeError | UnicodeDecodeError):
        return f"{exc.encoding} codec: {exc.reason} at position {exc.start}"
    return None


def redacted_error(exc: BaseException) -> str:
    """``ClassName`` or ``ClassName: message`` (see :func:`redacted_message`)."""
    message = redacted_message(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def redacted_traceback(exc: BaseException) -> str:
    """The traceback Python would print for ``exc`` and the exceptions it was raised from or
    while handling, each exception's line as :func:`redacted_error` (frames show no values)."""
    chain: list[BaseException] = []  # newest first
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__
    parts: list[str] = []
    oldest_first = chain[::-1]
    for i, item in enumerate(oldest_first):
        if i:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if item.__cause__ is oldest_first[i - 1]
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        parts.append(redacted_error(item) + "\n")
    return "".join(parts).rstrip("\n")


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if any(word in key.lower() for word in _REDACT):
            event[key] = "[redacted]"
        elif key == "exc_info":
            exc = _exception(value)
            del event[key]
            if exc is not None:
                event["exception"] = redacted_traceback(exc)
        elif isinstance(value, BaseException):
            event[key] = redacted_error(value)
    return event


def _exception(exc_info: Any) -> BaseException | None:
    """The exception of a logging call's ``exc_info`` (True, an exception or a sys.exc_info())."""
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, tuple):
        exc_info = exc_info[1]
    return exc_info if isinstance(exc_info, BaseException) else None


class _Redacted(str):
    """An exception as a log record's argument: ``%s`` and ``%r`` both show it redacted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _redact_record(record: logging.LogRecord) -> None:
    exc = _exception(record.exc_info)
    record.exc_info = None
    if exc is not None:
        # Formatter.format prints exc_text after the message; exc_info would be formatted anew
        record.exc_text = redacted_traceback(exc)
    if isinstance(record.msg, BaseException):
        record.msg = redacted_error(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(
            _Redacted(redacted_error(a)) if isinstance(a, BaseException) else a for a in record.args
        )
    elif isinstance(record.args, dict):
        args = record.args
        for key, value in args.items():
            if isinstance(value, BaseException):
                args[key] = _Redacted(redacted_error(value))
        if exc is not None and "exc" in args:
            # Celery's task failure (celery.app.trace): "exc" is the exception's repr and
            # "traceback" its full text, both made before logging; the same dict is the
            # record's "data" extra, so handlers that read it see the redacted ones too
            args["exc"] = redacted_error(exc)
            if "traceback" in args:
                args["traceback"] = record.exc_text


class _RedactingFactory:
    """Wraps the log record factory: every record is redacted as it is created."""

    def __init__(self, make: Callable[..., logging.LogRecord]) -> None:
        self.make = make

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.make(*args, **kwargs)
        _redact_record(record)
        return record


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # Alembic announces each of its plugins at INFO when it is imported: noise on every start
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
