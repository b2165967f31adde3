"""Pairing codes: eight digits, "1234-5678", seven of them secret and the last a Damm check digit.

One doorway shows a code; a person reads it and types it on the other. The code is the password of the
SPAKE2 exchange (:mod:`app.pairing.protocol`), so an attacker who does not know it gets exactly one online
guess per code, with odds of 1 in 10^7 (23.3 bits), and learns nothing from a failed guess.

Theory of operation
-------------------
The seven secret digits come from :mod:`secrets`. The eighth is a Damm check digit: Damm's quasigroup of
order 10 detects every single-digit error and every transposition of two adjacent digits, which are the
mistakes people make when typing a number. :func:`parse_code` checks it locally, so a typo is reported
before anything is sent and does not use up the code on the showing doorway. Input may carry spaces and
dashes anywhere ("1234 5678", "12-34-56-78").

The same code can travel as a QR code: :func:`qr_payload` builds a ``doorway-pair:`` URI with the code, the
showing doorway's address and its fingerprint, and :func:`qr_terminal` draws it with text characters.
"""

from __future__ import annotations

import io
import math
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlencode

SECRET_DIGITS: Final = 7
"""Random digits in a code."""
CODE_DIGITS: Final = SECRET_DIGITS + 1
"""Digits in a code, check digit included."""
SECRET_BITS: Final = SECRET_DIGITS * math.log2(10)
"""Bits of secret in a code (about 23.3)."""
QR_SCHEME: Final = "doorway-pair"
"""URI scheme of the QR payload."""

# Damm's totally anti-symmetric quasigroup of order 10 (H. M. Damm, 2004; the table from his thesis).
_DAMM: Final = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


class CodeError(ValueError):
    """Text is not a valid pairing code. The message says why, ready to print."""


def damm_digit(digits: str) -> str:
    """The Damm check digit of a string of decimal digits."""
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][ord(ch) - 48]
    return str(interim)


def new_code() -> str:
    """A fresh code: seven random digits and their check digit, as 8 digits without separators."""
    secret = "".join(str(secrets.randbelow(10)) for _ in range(SECRET_DIGITS))
    return secret + damm_digit(secret)


def format_code(code: str) -> str:
    """The code as shown and typed: ``1234-5678``."""
    return f"{code[:4]}-{code[4:]}"


def parse_code(text: str) -> str:
    """The code in ``text`` as 8 digits, spaces and dashes ignored; raises :class:`CodeError`.

    A check-digit mismatch is reported as a typo, before anything is sent to the other doorway.
    """
    cleaned = "".join(ch for ch in text if ch not in " -\t")
    if not cleaned.isascii() or not cleaned.isdigit():
        raise CodeError(f"{text!r} is not a pairing code: a code is {CODE_DIGITS} digits, like 1234-5678")
    if len(cleaned) != CODE_DIGITS:
        raise CodeError(
            f"{text!r} is not a pairing code: it has {len(cleaned)} digits, a code has {CODE_DIGITS}"
        )
    if damm_digit(cleaned) != "0":
        raise CodeError(
            f"{format_code(cleaned)} has a typo (its check digit does not match); "
            "check it against the code shown — nothing was sent, the code is still valid"
        )
    return cleaned


@dataclass(frozen=True)
class QrPayload:
    """What a pairing QR code carries."""

    code: str
    """The 8-digit code, check digit included."""
    host: str
    """Address of the showing doorway's pairing port."""
    port: int
    """TCP pairing port."""
    fingerprint: str
    """The showing doorway's fingerprint, to compare after pairing."""


def qr_payload(code: str, host: str, port: int, fingerprint: str) -> str:
    """The URI a pairing QR code carries: ``doorway-pair:?code=12345678&host=...&port=...&fp=...``."""
    query = urlencode({"code": code, "host": host, "port": str(port), "fp": fingerprint})
    return f"{QR_SCHEME}:?{query}"


def parse_qr_payload(uri: str) -> QrPayload:
    """The fields of a :func:`qr_payload` URI; raises :class:`CodeError` for anything else."""
    prefix = f"{QR_SCHEME}:?"
    if not uri.startswith(prefix):
        raise CodeError(f"not a Doorway pairing QR code (it does not start with {prefix!r})")
    try:
        fields = parse_qs(uri[len(prefix) :], strict_parsing=True, max_num_fields=8)
    except ValueError as exc:
        raise CodeError(f"damaged pairing QR code: {exc}") from None
    try:
        values = {k: fields[k][0] for k in ("code", "host", "port", "fp")}
        port = int(values["port"])
    except (KeyError, ValueError):
        raise CodeError("damaged pairing QR code: it lacks code, host, port or fp") from None
    if not 1 <= port <= 65535:
        raise CodeError(f"damaged pairing QR code: port {port} is out of range")
    return QrPayload(parse_code(values["code"]), values["host"], port, values["fp"])


def qr_terminal(payload: str) -> str:
    """``payload`` as a QR code drawn with block characters (two modules per line), ready to print."""
    import segno  # only the command that shows a code needs it

    out = io.StringIO()
    segno.make(payload, error="m").terminal(out=out, compact=True)
    return out.getvalue()
