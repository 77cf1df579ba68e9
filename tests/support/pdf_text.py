"""The text of a PDF as a reader gets it back: each string shown at one position, decoded through
its font's ``ToUnicode`` map (embedded TrueType subsets show glyph codes, not characters).

Enough of PDF for what reportlab writes with ``pageCompression=0``: objects, Flate-compressed
streams, fonts named in the resources with their ``ToUnicode`` CMaps (``bfchar`` and
``bfrange``), and text shown with ``Tf`` / ``Tm`` / ``Tj``. Fonts without a map (the standard
14) decode as Latin-1. No dependency: the tests read exactly what a PDF reader has to go on.
"""

from __future__ import annotations

import re
import zlib

__all__ = ["pdf_texts"]

_OBJECT = re.compile(rb"(\d+) 0 obj(.*?)endobj", re.S)
_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\n?endstream", re.S)
_FONT = re.compile(
    rb"/Name /(\S+)[^>]*?/ToUnicode (\d+) 0 R|/ToUnicode (\d+) 0 R[^>]*?/Name /(\S+)", re.S
)
_TOKEN = re.compile(rb"/(\S+) [\d.]+ Tf|\(((?:\\.|[^\\)])*)\) Tj|( Tm| Td|T\*)", re.S)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _streams(pdf: bytes) -> dict[int, bytes]:
    found = {}
    for number, body in _OBJECT.findall(pdf):
        stream = _STREAM.search(body)
        if stream is None:
            continue
        data = stream.group(1)
        if b"/FlateDecode" in body[: stream.start()]:
            data = zlib.decompress(data)
        found[int(number)] = data
    return found


def _cmap(data: bytes) -> dict[int, str]:
    """A ToUnicode CMap: code → text."""
    mapping: dict[int, str] = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", data, re.S):
        for code, text in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]*)>", block):
            mapping[int(code, 16)] = bytes.fromhex(text.decode()).decode("utf-16-be")
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", data, re.S):
        for low, high, start in re.findall(
            rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block
        ):
            first = int(start, 16)
            for offset, code in enumerate(range(int(low, 16), int(high, 16) + 1)):
                mapping[code] = chr(first + offset)
    return mapping


def _unescape(raw: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(raw):
        char = raw[i : i + 1]
        if char != b"\\":
            out += char
            i += 1
            continue
        following = raw[i + 1 : i + 2]
        octal = re.match(rb"[0-7]{1,3}", raw[i + 1 : i + 4])
        if octal:
            out.append(int(octal.group(0), 8) & 0xFF)
            i += 1 + len(octal.group(0))
        else:
            out += _ESCAPES.get(following, following)
            i += 2
    return bytes(out)


def pdf_texts(pdf: bytes) -> list[str]:
    """Every string the pages show, one per text position, in drawing order."""
    streams = _streams(pdf)
    maps: dict[bytes, dict[int, str]] = {}
    for _, body in _OBJECT.findall(pdf):
        if b"/ToUnicode" not in body:
            continue
        match = _FONT.search(body)
        if match is not None:
            name = match.group(1) or match.group(4)
            cmap = int(match.group(2) or match.group(3))
            maps[name] = _cmap(streams[cmap])
    texts: list[str] = []
    current: dict[int, str] | None = None
    pending = ""
    for content in streams.values():
        if b" Tj" not in content:
            continue
        for font, shown, move in _TOKEN.findall(content):
            if font:
                current = maps.get(font)
            elif move:
                if pending:
                    texts.append(pending)
                pending = ""
            else:
                raw = _unescape(shown)
                if current is None:
                    pending += raw.decode("latin-1")
                else:
                    pending += "".join(current.get(byte, "\ufffd") for byte in raw)
        if pending:
            texts.append(pending)
            pending = ""
    return texts
