"""Exceptions in logs: the class always, the message only where the class vouches for it, the
traceback's frames without any exception's text; in structlog's events and in every record of
the standard library's logging (Celery's task lines among them)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from celery.exceptions import Retry

from core.logging import configure_logging, redacted_error, redacted_message, redacted_traceback
from domain.errors import PayloadError, TransportError
from workflows.celery_app import _id_arguments, _redact_retry_reason
from workflows.pipeline import buy_label

ADDRESS = "Zebulon Quackenbush, 742 Evergreen Terrace, 53809 Fennimore"


def _encode_error() -> UnicodeEncodeError:
    body = json.dumps({"ship_to": ADDRESS + "\ud800"}, ensure_ascii=False)
    try:
        body.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc
    raise AssertionError("the body encoded")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """configure_logging() as the CLI calls it, its output captured; everything put back."""
    factory, root, config = (
        logging.getLogRecordFactory(),
        logging.getLogger(),
        structlog.get_config(),
    )
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    out = io.StringIO()
    configure_logging("INFO")
    handler = root.handlers[0]  # basicConfig's
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))
    try:
        yield out
    finally:
        logging.setLogRecordFactory(factory)
        root.handlers, root.level = handlers, level
        structlog.configure(**config)


def test_a_foreign_exception_is_its_class_and_a_unicode_error_keeps_codec_and_reason() -> None:
    error = _encode_error()
    assert ADDRESS in repr(error)  # what Celery used to log

    assert redacted_error(error) == (
        f"UnicodeEncodeError: utf-8 codec: surrogates not allowed at position {error.start}"
    )
    assert redacted_error(ValueError(ADDRESS)) == "ValueError"
    assert redacted_message(KeyError(ADDRESS)) is None


def test_the_error_tree_vouches_for_its_messages_which_are_cut_at_the_limit() -> None:
    error = TransportError("labels.create: timeout (ReadTimeout)")

    assert redacted_error(error) == "TransportError: labels.create: timeout (ReadTimeout)"
    assert redacted_message(PayloadError("x" * 900)) == "x" * 500
    assert redacted_message(error, 14) == "labels.create:"


def test_a_traceback_keeps_every_frame_and_chained_class_and_no_exception_text() -> None:
    def send() -> None:
        raise _encode_error()

    def buy() -> None:
        try:
            send()
        except UnicodeEncodeError as exc:
            raise RuntimeError(ADDRESS) from exc

    def task() -> None:
        try:
            buy()
        except RuntimeError:
            raise KeyError(ADDRESS) from None

    def step() -> None:
        try:
            task()
        except KeyError:
            raise TransportError("labels.create: ConnectError")  # noqa: B904  (context kept)

    with pytest.raises(TransportError) as raised:
        step()
    text = redacted_traceback(raised.value)

    assert "Quackenbush" not in text and "Evergreen" not in text
    assert text.startswith("Traceback (most recent call last):\n")
    # `from None` hides what the KeyError was raised during, as Python's own traceback does
    assert "send()" not in text and "RuntimeError" not in text
    assert "in task\n" in text and "in step\n" in text and "raise KeyError(ADDRESS)" in text
    assert "\nKeyError\n\nDuring handling of the above exception, another exception" in text
    assert text.endswith("\nTransportError: labels.create: ConnectError")


def test_a_cause_is_printed_first_with_its_link() -> None:
    def buy() -> None:
        try:
            raise _encode_error()
        except UnicodeEncodeError as exc:
            raise ValueError(ADDRESS) from exc

    with pytest.raises(ValueError) as raised:
        buy()
    text = redacted_traceback(raised.value)

    first, _, second = text.partition(
        "\n\nThe above exception was the direct cause of the following exception:\n\n"
    )
    assert first.startswith("Traceback") and "UnicodeEncodeError: utf-8 codec" in first
    assert second.endswith("\nValueError") and ADDRESS not in text


def test_structlog_events_show_exceptions_and_their_tracebacks_redacted(logs: io.StringIO) -> None:
    log = structlog.get_logger("test")
    error = _encode_error()

    log.error("task.failed", error=error, shipping_address=ADDRESS)
    try:
        raise ValueError(ADDRESS)
    except ValueError:
        log.exception("task.crashed")

    text = logs.getvalue()
    assert "Quackenbush" not in text
    assert "error='UnicodeEncodeError: utf-8 codec: surrogates not allowed" in text
    assert "shipping_address=[redacted]" in text
    assert "task.crashed" in text and "Traceback (most recent call last)" in text
    assert "raise ValueError(ADDRESS)" in text and text.rstrip().endswith("ValueError")


def test_any_stdlib_record_shows_exception_arguments_and_tracebacks_redacted(
    logs: io.StringIO,
) -> None:
    # given what Celery's result backend logs when a chord header failed
    logger = logging.getLogger("celery.backends.redis")
    error = _encode_error()

    # when
    logger.error("Chord %r raised: %r", "gid", error)
    try:
        raise error
    except UnicodeEncodeError:
        logger.exception("Callback for %s raised: %s", "gid", error)
    logger.warning(ValueError(ADDRESS))

    # then
    lines = logs.getvalue().splitlines()
    assert ADDRESS not in logs.getvalue()
    assert lines[0] == (
        "ERROR celery.backends.redis: Chord 'gid' raised: UnicodeEncodeError: utf-8 codec: "
        f"surrogates not allowed at position {error.start}"
    )
    assert lines[1].startswith("ERROR celery.backends.redis: Callback for gid raised: Unicode")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "WARNING celery.backends.redis: ValueError"


def test_celerys_task_failure_context_is_redacted_in_the_line_and_in_its_data(
    logs: io.StringIO,
) -> None:
    # given the record celery.app.trace logs for a task that raised (Celery's own format)
    error = _raised(_encode_error())
    context = {
        "id": "t1",
        "name": "ordersync.outbound.buy_label",
        "exc": repr(error),
        "traceback": f"Traceback ...\n{error!r}",
        "description": "raised unexpected",
    }

    # when
    logging.getLogger("celery.app.trace").log(
        logging.ERROR,
        "Task %(name)s[%(id)s] %(description)s: %(exc)s",
        context,
        exc_info=(type(error), error, error.__traceback__),
        extra={"data": context},
    )

    # then
    text = logs.getvalue()
    assert "Quackenbush" not in text and "Quackenbush" not in json.dumps(context)
    assert text.startswith(
        "ERROR celery.app.trace: Task ordersync.outbound.buy_label[t1] raised unexpected: "
        "UnicodeEncodeError: utf-8 codec: surrogates not allowed"
    )
    assert "\nTraceback (most recent call last):\n" in text
    assert context["traceback"].startswith("Traceback (most recent call last):")


def test_a_retry_reason_names_its_exception_redacted() -> None:
    reason = Retry(exc=ConnectionError(f"reset while sending {ADDRESS}"), when=1.5)
    assert ADDRESS in str(reason)  # what Celery's "Task ... retry:" line would show

    _redact_retry_reason(reason=reason)

    assert str(reason) == "Retry in 1.5s: ConnectionError"


def test_a_tasks_integer_id_arguments_are_bound_to_its_log_lines_and_nothing_else() -> None:
    assert _id_arguments(buy_label, (42,), {}) == {"order_id": 42}
    assert _id_arguments(buy_label, (), {"order_id": 7}) == {"order_id": 7}
    assert _id_arguments(buy_label, ("Zebulon",), {}) == {}
    assert _id_arguments(buy_label, (1, 2), {}) == {}  # the call itself fails, and says so
