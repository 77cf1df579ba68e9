"""The webhook receiver's body buffer (``web.webhooks._Body``): in memory up to 64 KiB, in a
temporary file past it, the bytes in order either way; a body read without keeping holds
nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from web.webhooks import _SMALL, _Body

chunks = st.lists(st.binary(min_size=1, max_size=40_000), max_size=8)


@given(chunks)
def test_the_body_reads_back_every_chunk_in_order_in_memory_or_on_disk(parts: list[bytes]) -> None:
    body = _Body(bytearray())
    try:
        for part in parts:
            body.write(part)
        whole = b"".join(parts)
        assert body.read() == whole
        # in memory while it fits, in a file once it does not (and nothing left in memory)
        assert (body.file is None) == (len(whole) <= _SMALL)
        assert body.buffer is not None and len(body.buffer) == (0 if body.file else len(whole))
    finally:
        body.close()


def test_a_body_not_kept_holds_nothing() -> None:
    body = _Body(None)
    body.write(b"x" * (_SMALL + 1))
    assert body.read() == b"" and body.file is None
