"""Pairing codes: enough secret, a check digit that catches typing mistakes, lenient parsing, QR payload."""

from __future__ import annotations

import random

import pytest

from app.pairing.code import (
    CODE_DIGITS,
    SECRET_BITS,
    CodeError,
    damm_digit,
    format_code,
    new_code,
    parse_code,
    parse_qr_payload,
    qr_payload,
    qr_terminal,
)


def sample_codes(n: int) -> list[str]:
    rng = random.Random(7)
    secrets = [f"{rng.randrange(10**7):07d}" for _ in range(n)] + ["0000000", "9999999", "1234567"]
    return [s + damm_digit(s) for s in secrets]


def test_enough_secret() -> None:
    assert SECRET_BITS >= 20
    codes = {new_code() for _ in range(500)}
    assert len(codes) > 490  # 1 in 10^7 each: collisions among 500 are rare (p ≈ 1.2 %); > 10 never
    for code in codes:
        assert len(code) == CODE_DIGITS and code.isdigit()
        assert parse_code(code) == code


def test_damm_known_value() -> None:
    # The worked example from Damm's algorithm: 572 -> check digit 4.
    assert damm_digit("572") == "4"
    assert parse_code("0000-5724") == "00005724"


def test_every_single_digit_typo_is_caught() -> None:
    for code in sample_codes(200):
        for pos in range(CODE_DIGITS):
            for digit in "0123456789":
                if digit == code[pos]:
                    continue
                typo = code[:pos] + digit + code[pos + 1 :]
                with pytest.raises(CodeError, match="has a typo"):
                    parse_code(typo)


def test_every_adjacent_transposition_is_caught() -> None:
    for code in sample_codes(500):
        for pos in range(CODE_DIGITS - 1):
            if code[pos] == code[pos + 1]:
                continue
            swapped = code[:pos] + code[pos + 1] + code[pos] + code[pos + 2 :]
            with pytest.raises(CodeError, match="has a typo"):
                parse_code(swapped)


@pytest.mark.parametrize(
    "layout", ["abcd-efgh", "abcd efgh", " abcdefgh ", "ab-cd-ef-gh", "abcd\tefgh", "abcd - efgh"]
)
def test_parse_variants(layout: str) -> None:
    digits = "1234567" + damm_digit("1234567")
    text = layout.translate(str.maketrans("abcdefgh", digits))
    assert parse_code(text) == digits


def test_format() -> None:
    assert format_code("12345678") == "1234-5678"


def test_parse_errors_are_clear() -> None:
    with pytest.raises(CodeError) as exc:
        parse_code("1234-567")
    assert str(exc.value) == "'1234-567' is not a pairing code: it has 7 digits, a code has 8"
    with pytest.raises(CodeError, match=r"is not a pairing code: a code is 8 digits, like 1234-5678"):
        parse_code("12ab-5678")
    with pytest.raises(CodeError, match="is not a pairing code"):
        parse_code("١٢٣٤٥٦٧٨")  # Arabic-Indic digits are digits to str.isdigit, not to us
    with pytest.raises(CodeError) as exc:
        parse_code("1234-5670")
    assert "nothing was sent, the code is still valid" in str(exc.value)


def test_qr_payload_round_trip() -> None:
    code = sample_codes(1)[0]
    uri = qr_payload(code, "192.168.1.20", 47001, "RQ7K-2M9D-XW4T")
    assert uri == f"doorway-pair:?code={code}&host=192.168.1.20&port=47001&fp=RQ7K-2M9D-XW4T"
    got = parse_qr_payload(uri)
    assert (got.code, got.host, got.port, got.fingerprint) == (code, "192.168.1.20", 47001, "RQ7K-2M9D-XW4T")
    v6 = parse_qr_payload(qr_payload(code, "fe80::1%eth0", 1, "X"))
    assert v6.host == "fe80::1%eth0"


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/",
        "doorway-pair:?code=1",
        "doorway-pair:?host=a&port=1&fp=x",
        "doorway-pair:?code=12345678&host=a&port=99999&fp=x",
        "doorway-pair:?code=12345678&host=a&port=x&fp=x",
        "doorway-pair:?&&&",
    ],
)
def test_bad_qr_payloads(uri: str) -> None:
    with pytest.raises(CodeError):
        parse_qr_payload(uri)


def test_qr_terminal_draws_blocks() -> None:
    art = qr_terminal(qr_payload(sample_codes(1)[0], "10.0.0.2", 47001, "RQ7K-2M9D-XW4T"))
    lines = art.splitlines()
    assert len(lines) > 15
    assert len({len(line) for line in lines}) == 1  # a rectangle
    assert set("".join(lines)) <= set("█▀▄ ")
