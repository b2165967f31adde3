"""Pairing through the admin panel, end to end between two admin apps on loopback: one shows a code, the
other joins with it; wrong codes, typos, cancelling, unpairing, and the page itself."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.app import create_app
from admin.store import AdminStore
from app.identity import fingerprint_of
from app.pairing.code import damm_digit, parse_code
from app.pairing.protocol import CODE_MISMATCH
from app.settings import Settings
from app.state import StateStore
from tests.admin.conftest import BASE_URL, Browser, FakeClock, FakeFeed, FakeLogSource, api_setup, setup_code


def pairing_settings(state_dir: Path, sock_dir: Path, name: str) -> Settings:
    return Settings(
        engine={"name": name, "state_dir": state_dir, "control_socket": sock_dir / "engine.sock"},
        hwcontrol={"control_socket": sock_dir / "hwcontrol.sock"},
        network={"listen_port": 47100},
        # Loopback and a free port: the test binds nothing anyone else sees.
        pairing={"listen_host": "127.0.0.1", "port": 0},
    )


@pytest.fixture
def settings(tmp_path: Path, sock_dir: Path) -> Settings:
    """Doorway A ("hall"), the one the ``owner`` fixture logs in to."""
    return pairing_settings(tmp_path / "state", sock_dir, "hall")


@dataclass
class Other:
    """Doorway B: its own app, state directory and logged-in browser."""

    browser: Browser
    settings: Settings


@pytest.fixture
def other(tmp_path: Path, clock: FakeClock, hasher: argon2.PasswordHasher) -> Iterator[Other]:
    with tempfile.TemporaryDirectory(prefix="dw-admin-b-", dir="/tmp") as socks:
        settings = pairing_settings(tmp_path / "state-b", Path(socks), "kitchen")
        store = AdminStore(settings.engine.state_dir)
        app = create_app(
            settings,
            config_path=tmp_path / "b.toml",
            store=store,
            clock=clock,
            hasher=hasher,
            collector=FakeFeed(),
            log_source=FakeLogSource(),
        )
        with TestClient(app, base_url=BASE_URL) as c:
            r = api_setup(c, setup_code(store, clock, hasher))
            assert r.status_code == 201
            yield Other(Browser(c, r.json()["csrf_token"]), settings)
        store.close()


def wait_for_outcome(browser: Browser, timeout_s: float = 10.0) -> dict[str, Any]:
    """The show side's attempt once it is no longer waiting (its thread stores the twin after the join
    side has returned)."""
    deadline = time.monotonic() + timeout_s
    while True:
        attempt: dict[str, Any] = browser.client.get("/api/pairing/status").json()
        if attempt["state"] != "waiting" or time.monotonic() > deadline:
            return attempt
        time.sleep(0.02)


def other_code(code: str) -> str:
    """A well-formed code (right check digit) that is not ``code``."""
    digits = parse_code(code)
    secret = f"{(int(digits[:7]) + 1) % 10_000_000:07d}"
    return secret + damm_digit(secret)


def test_two_doorways_pair_through_their_panels(owner: Browser, other: Other, settings: Settings) -> None:
    a, b = owner, other.browser
    me_a, me_b = a.client.get("/api/pairing").json(), b.client.get("/api/pairing").json()
    assert me_a["name"] == "hall" and me_a["twin"] is None and me_a["attempt"]["state"] == "idle"

    shown = a.post("/api/pairing/show").json()
    assert shown["state"] == "waiting" and shown["role"] == "show"
    assert shown["code"][4] == "-" and shown["address"].startswith("127.0.0.1:")
    assert shown["qr_svg"].startswith("<svg") and "<path" in shown["qr_svg"]
    # Showing again while waiting gives the same code.
    assert a.post("/api/pairing/show").json()["code"] == shown["code"]

    r = b.post("/api/pairing/join", json={"code": shown["code"], "address": shown["address"]})
    assert r.status_code == 200, r.text
    joined = r.json()
    assert joined["twin"]["name"] == "hall"
    assert joined["twin"]["fingerprint"] == me_a["fingerprint"]
    assert joined["message"].startswith(f"paired with hall ({me_a['fingerprint']})")

    attempt = wait_for_outcome(a)
    assert attempt["state"] == "paired", attempt
    assert attempt["peer_name"] == "kitchen" and attempt["peer_fingerprint"] == me_b["fingerprint"]
    assert attempt["code"] is None and attempt["qr_svg"] is None

    # Both state stores hold each other (the engines notice by themselves).
    with StateStore(settings.engine.state_dir) as sa, StateStore(other.settings.engine.state_dir) as sb:
        twin_a, twin_b = sa.twin(), sb.twin()
    assert twin_a is not None and twin_b is not None
    assert fingerprint_of(twin_a.public_key) == me_b["fingerprint"] and twin_a.name == "kitchen"
    assert fingerprint_of(twin_b.public_key) == me_a["fingerprint"] and twin_b.name == "hall"
    assert twin_a.media_host == "127.0.0.1" and twin_a.media_port == 47100
    assert a.client.get("/api/pairing").json()["twin"]["name"] == "kitchen"

    # The page says so, and both panels recorded it.
    page = a.client.get("/pairing").text
    assert "kitchen" in page and me_b["fingerprint"] in page and ">Unpair</button>" in page
    for browser in (a, b):
        events = browser.client.get("/api/history", params={"hours": 1}).json()["events"]
        assert any(e["message"].startswith("paired with") and e["source"] == "admin" for e in events)


def test_a_wrong_code_fails_on_both_with_the_same_message(owner: Browser, other: Other) -> None:
    a, b = owner, other.browser
    shown = a.post("/api/pairing/show").json()
    r = b.post("/api/pairing/join", json={"code": other_code(shown["code"]), "address": shown["address"]})
    assert r.status_code == 502
    assert r.json()["error"] == f"pairing failed: {CODE_MISMATCH}"
    attempt = wait_for_outcome(a)
    assert attempt["state"] == "failed"
    assert attempt["message"] == f"pairing failed: {CODE_MISMATCH}"
    assert a.client.get("/api/pairing").json()["twin"] is None
    assert b.client.get("/api/pairing").json()["twin"] is None
    # The page shows the outcome, and the form to try again.
    page = a.client.get("/pairing").text
    assert "the code did not match" in page and ">Show a pairing code</button>" in page


def test_a_typo_is_caught_before_anything_is_sent(owner: Browser, other: Other) -> None:
    a, b = owner, other.browser
    shown = a.post("/api/pairing/show").json()
    digits = parse_code(shown["code"])
    typo = digits[:7] + str((int(digits[7]) + 1) % 10)
    r = b.post("/api/pairing/join", json={"code": typo, "address": shown["address"]})
    assert r.status_code == 422
    assert "has a typo" in r.json()["error"] and "nothing was sent" in r.json()["error"]
    r = b.post("/api/pairing/join", json={"code": shown["code"], "address": "127.0.0.1:99999"})
    assert r.status_code == 422 and "the port must be a number from 1 to 65535" in r.json()["error"]
    # A still waits with the same code; cancelling withdraws it.
    assert a.client.get("/api/pairing/status").json()["state"] == "waiting"
    cancelled = a.post("/api/pairing/cancel").json()
    assert cancelled["state"] == "cancelled" and "withdrawn" in cancelled["message"]
    r = b.post("/api/pairing/join", json={"code": shown["code"], "address": shown["address"]})
    assert r.status_code == 502 and "connection refused" in r.json()["error"]


def test_one_attempt_at_a_time(owner: Browser) -> None:
    shown = owner.post("/api/pairing/show").json()
    r = owner.post("/api/pairing/join", json={"code": shown["code"], "address": shown["address"]})
    assert r.status_code == 409 and "showing a pairing code; cancel it first" in r.json()["error"]
    owner.post("/api/pairing/cancel")


def test_the_page_shows_the_code_big_and_its_qr_inline(owner: Browser) -> None:
    r = owner.client.post("/pairing/show", data={"csrf_token": owner.csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/pairing"
    html = owner.client.get("/pairing").text
    code = owner.client.get("/api/pairing/status").json()["code"]
    assert f'<p class="code" aria-label="Pairing code">{code}</p>' in html
    assert "<svg viewBox=" in html and 'class="qr"' in html and "<title>Pairing QR code</title>" in html
    assert " style=" not in html and "<script>" not in html
    assert "data-pairing-waiting" in html and ">Cancel</button>" in html
    r = owner.client.post("/pairing/cancel", data={"csrf_token": owner.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert "pairing cancelled" in owner.client.get("/pairing").text


def test_the_join_form_reports_the_result(owner: Browser, other: Other) -> None:
    b = other.browser
    shown = owner.post("/api/pairing/show").json()
    r = b.client.post(
        "/pairing/join", data={"csrf_token": b.csrf, "code": shown["code"], "address": shown["address"]}
    )
    assert r.status_code == 200 and "Paired with hall" in r.text
    assert wait_for_outcome(owner)["state"] == "paired"
    r = b.client.post("/pairing/join", data={"csrf_token": b.csrf, "code": "1234", "address": "x"})
    assert r.status_code == 422 and "it has 4 digits, a code has 8" in r.text
    assert 'value="1234"' in r.text  # What was typed stays in the form.


def test_unpair(owner: Browser, other: Other, settings: Settings) -> None:
    shown = owner.post("/api/pairing/show").json()
    r = other.browser.post("/api/pairing/join", json={"code": shown["code"], "address": shown["address"]})
    assert r.status_code == 200
    assert wait_for_outcome(owner)["state"] == "paired"
    page = owner.client.get("/pairing").text
    assert 'data-confirm="Forget kitchen?' in page  # admin.js asks before the form is sent.

    r = owner.post("/api/pairing/unpair")
    assert r.status_code == 200
    assert r.json()["removed"]["name"] == "kitchen"
    assert r.json()["message"].startswith("removed the pairing with kitchen (")
    with StateStore(settings.engine.state_dir) as store:
        assert store.twin() is None
    # The attempt that paired them no longer says "paired with kitchen" beside "Not paired".
    assert owner.client.get("/api/pairing/status").json()["state"] == "idle"
    assert owner.post("/api/pairing/unpair").json() == {
        "message": "not paired; nothing to remove",
        "removed": None,
    }
    r = owner.client.post("/pairing/unpair", data={"csrf_token": owner.csrf})
    assert r.status_code == 200 and "This doorway was not paired." in r.text and "Not paired" in r.text
    events = owner.client.get("/api/history", params={"hours": 1}).json()["events"]
    assert any(e["message"].startswith("unpaired from kitchen (") for e in events)


def test_the_pairing_port_in_use_is_said_plainly(owner: Browser, app: FastAPI) -> None:
    current = app.state.admin.current
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        pairing = current.get().pairing.model_copy(update={"port": port})
        current.set(current.get().model_copy(update={"pairing": pairing}))
        r = owner.post("/api/pairing/show")
    assert r.status_code == 503 and f"cannot listen on 127.0.0.1:{port}" in r.json()["error"]
    assert owner.client.get("/api/pairing/status").json()["state"] == "idle"
