"""Set-up with the one-time code, login, logout, lock-out and password change, over HTTP (API and forms)."""

from __future__ import annotations

import re

import argon2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.app import create_app
from admin.security import (
    SESSION_COOKIE,
    SETUP_CODE_TTL_S,
    Passwords,
    format_setup_code,
    issue_setup_code,
    new_setup_code,
    parse_setup_code,
)
from admin.store import AdminStore, SetupClosedError
from app.pairing.code import damm_digit
from app.settings import Settings
from tests.admin.conftest import (
    BASE_URL,
    PASSWORD,
    USER,
    Browser,
    FakeClock,
    FakeFeed,
    api_login,
    api_setup,
    new_client,
    pre_session_token,
    setup_code,
)


def other_valid_code(code: str) -> str:
    """A well-formed code (right check digit) that is not ``code``."""
    digits = code.replace("-", "")
    secret = ("1" if digits[0] != "1" else "2") + digits[1:15]
    return format_setup_code(secret + damm_digit(secret))


def form_token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


# -- setup code -------------------------------------------------------------------------------------------


def test_setup_code_format_and_entropy() -> None:
    code = new_setup_code()
    assert len(code) == 16 and code.isdigit()
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}-\d{4}", format_setup_code(code))
    assert parse_setup_code(format_setup_code(code)) == code
    assert parse_setup_code(" ".join(code[i : i + 4] for i in range(0, 16, 4))) == code
    # 15 random digits: more than 40 bits.
    assert 15 * 3.32 > 40
    assert len({new_setup_code() for _ in range(50)}) == 50


def test_before_setup_every_page_leads_to_setup(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    r = client.get("/login", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/setup"
    r = client.get("/setup")
    assert r.status_code == 200
    assert "setup code" in r.text.lower() and "doorway admin setup-code" in r.text


def test_setup_without_any_code_is_refused(client: TestClient, store: AdminStore) -> None:
    r = api_setup(client, format_setup_code(new_setup_code()))
    assert r.status_code == 403
    assert "no setup code has been made" in r.json()["error"]
    assert store.owner() is None


def test_wrong_code_is_refused_and_counted(
    client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    code = setup_code(store, clock, hasher)
    r = api_setup(client, other_valid_code(code))
    assert r.status_code == 403 and r.json() == {"error": "the setup code is wrong"}
    assert store.owner() is None
    assert len(store.failures("client", "testclient", 0)) == 1
    clock.advance(5)
    assert api_setup(client, code).status_code == 201  # The right code still works afterwards.


def test_typo_in_code_is_reported_as_a_typo_and_not_counted(
    client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    code = setup_code(store, clock, hasher)
    typo = code[:-1] + str((int(code[-1]) + 1) % 10)
    r = api_setup(client, typo)
    assert r.status_code == 422 and "typo" in r.json()["error"]
    r = api_setup(client, "12345")
    assert r.status_code == 422 and "16 digits" in r.json()["error"]
    assert store.failures("client", "testclient", 0) == []


def test_expired_code_is_refused(
    client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    code = setup_code(store, clock, hasher)
    clock.advance(SETUP_CODE_TTL_S)
    r = api_setup(client, code)
    assert r.status_code == 403 and "expired" in r.json()["error"]
    assert store.owner() is None


def test_new_code_replaces_the_old_one(
    client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    first = setup_code(store, clock, hasher)
    second = setup_code(store, clock, hasher)
    assert api_setup(client, first).status_code == 403
    clock.advance(2)
    assert api_setup(client, second).status_code == 201


def test_code_is_single_use_and_setup_closes_for_good(
    app: FastAPI, client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    code = setup_code(store, clock, hasher)
    r = api_setup(client, code)
    assert r.status_code == 201
    body = r.json()
    assert body["username"] == USER and body["csrf_token"]
    owner = store.owner()
    assert owner is not None and owner.username == USER
    assert owner.password_hash.startswith("$argon2id$") and PASSWORD not in owner.password_hash
    assert store.setup_code() is None

    with new_client(app) as other:
        r = api_setup(other, code, username="intruder")
        assert r.status_code == 409 and "already exists" in r.json()["error"]
        assert other.get("/setup", follow_redirects=False).headers["location"] == "/login"
    with pytest.raises(SetupClosedError):
        issue_setup_code(store, Passwords(hasher), clock())
    assert store.owner() == owner


def test_setup_checks_name_and_password(
    client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    code = setup_code(store, clock, hasher)
    r = api_setup(client, code, password="short")
    assert r.status_code == 422 and "at least 10" in r.json()["error"]
    r = api_setup(client, code, username="", password=PASSWORD)
    assert r.status_code == 422 and "user name" in r.json()["error"]
    r = api_setup(client, code, username="owner-owner", password="Owner-Owner")
    assert r.status_code == 422 and "user name" in r.json()["error"]
    assert api_setup(client, code).status_code == 201


def test_setup_form_creates_owner_and_logs_in(
    client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    code = setup_code(store, clock, hasher)
    page = client.get("/setup")
    token = form_token(page.text)
    fields = {"csrf_token": token, "code": code, "username": USER, "password": PASSWORD}
    r = client.post("/setup", data={**fields, "password2": PASSWORD + "x"})
    assert r.status_code == 422 and "not the same" in r.text
    r = client.post("/setup", data={**fields, "password2": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.cookies.get(SESSION_COOKIE)
    assert client.get("/").status_code == 200


# -- login and logout -------------------------------------------------------------------------------------


def test_login_and_logout_api(owner: Browser, app: FastAPI, store: AdminStore) -> None:
    r = owner.post("/api/auth/logout")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert store.session_count() == 0
    r = owner.client.get("/api/auth/session")
    assert r.status_code == 401 and "not logged in" in r.json()["error"]

    r = api_login(owner.client)
    assert r.status_code == 200
    session = r.json()
    assert session["username"] == USER and session["idle_timeout_s"] == 3600
    r = owner.client.get("/api/auth/session")
    assert r.status_code == 200 and r.json()["csrf_token"] == session["csrf_token"]


def test_logout_ends_the_session_on_the_server(owner: Browser, app: FastAPI) -> None:
    stolen = owner.client.cookies.get(SESSION_COOKIE)
    assert stolen
    with new_client(app) as other:
        other.cookies.set(SESSION_COOKIE, stolen, domain="doorway.local")
        assert other.get("/api/auth/session").status_code == 200
        owner.post("/api/auth/logout")
        assert other.get("/api/auth/session").status_code == 401


def test_logout_form(owner: Browser) -> None:
    r = owner.client.post("/logout", data={"csrf_token": owner.csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert owner.client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_login_form_goes_back_to_the_page_asked_for(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    with new_client(app) as c:
        r = c.get("/password", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/password"
        page = c.get("/login?next=/password")
        assert 'name="next" value="/password"' in page.text
        token = form_token(page.text)
        fields = {"csrf_token": token, "username": USER, "next": "/password"}
        r = c.post("/login", data={**fields, "password": "wrong password!"})
        assert r.status_code == 401 and "wrong user name or password" in r.text
        assert 'value="owner"' in r.text  # The name stays filled in.
        clock.advance(1)  # After a failure the next try waits a second.
        r = c.post("/login", data={**fields, "password": PASSWORD}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/password"
        assert c.get("/password").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "x"])
def test_login_never_redirects_off_the_doorway(owner: Browser, app: FastAPI, target: str) -> None:
    with new_client(app) as c:
        token = form_token(c.get("/login").text)
        r = c.post(
            "/login",
            data={"csrf_token": token, "username": USER, "password": PASSWORD, "next": target},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/"


def test_unknown_user_costs_a_hash_and_says_the_same(
    owner: Browser, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = Passwords.verify_dummy

    def spy(self: Passwords, secret: str) -> None:
        calls.append(secret)
        original(self, secret)

    monkeypatch.setattr(Passwords, "verify_dummy", spy)
    with new_client(app) as c:
        r = api_login(c, username="nobody")
        assert r.status_code == 401 and r.json() == {"error": "wrong user name or password"}
    assert calls == [PASSWORD]


# -- lock-out ---------------------------------------------------------------------------------------------


def test_failures_lock_out_with_a_clear_message_and_unlock_after_the_time(
    owner: Browser, app: FastAPI, clock: FakeClock
) -> None:
    with new_client(app) as c:
        for i in range(5):
            r = api_login(c, password=f"wrong password {i}")
            assert r.status_code == 401, r.text
            clock.advance(60)
        # Locked: even the right password is refused, and the message says when to come back.
        r = api_login(c)
        assert r.status_code == 429
        msg = r.json()["error"]
        assert "locked" in msg and "try again at" in msg and "minutes" in msg
        retry = int(r.headers["Retry-After"])
        assert 15 * 60 - 60 - 1 <= retry <= 15 * 60 - 60
        # Attempts while locked are not counted: the lock ends when it said it would.
        clock.advance(retry - 1)
        assert api_login(c).status_code == 429
        clock.advance(1)
        assert api_login(c).status_code == 200


def test_each_failure_makes_the_next_try_wait_longer(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    with new_client(app) as c:
        waits = []
        for i in range(4):
            assert api_login(c, password=f"wrong password {i}").status_code == 401
            r = api_login(c)
            assert r.status_code == 429 and "wait" in r.json()["error"]
            waits.append(int(r.headers["Retry-After"]))
            clock.advance(waits[-1])
        assert waits == [1, 2, 4, 8]
        assert api_login(c).status_code == 200


def test_lockout_is_per_client_across_user_names(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    with new_client(app) as c:
        for i in range(5):
            assert api_login(c, username=f"guess{i}", password="whatever12").status_code == 401
            clock.advance(60)
        r = api_login(c)
        assert r.status_code == 429 and "locked" in r.json()["error"]


def test_lockout_of_the_login_form_shows_the_message(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    with new_client(app) as c:
        token = form_token(c.get("/login").text)
        for i in range(5):
            c.post("/login", data={"csrf_token": token, "username": USER, "password": f"nope nope {i}"})
            clock.advance(60)
        r = c.post("/login", data={"csrf_token": token, "username": USER, "password": PASSWORD})
        assert r.status_code == 429 and "try again at" in r.text and "Retry-After" in r.headers


def test_success_clears_the_failures(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    with new_client(app) as c:
        for i in range(4):
            assert api_login(c, password=f"wrong password {i}").status_code == 401
            clock.advance(60)
        assert api_login(c).status_code == 200
        for i in range(4):
            assert api_login(c, password=f"wrong password {i}").status_code == 401
            clock.advance(60)
        assert api_login(c).status_code == 200


# -- sessions ---------------------------------------------------------------------------------------------


def test_session_ends_after_idle_time(owner: Browser, clock: FakeClock) -> None:
    clock.advance(59 * 60)
    assert owner.client.get("/api/auth/session").status_code == 200
    clock.advance(59 * 60)  # Used 59 minutes ago: still alive.
    assert owner.client.get("/api/auth/session").status_code == 200
    clock.advance(60 * 60)
    assert owner.client.get("/api/auth/session").status_code == 401


def test_session_ends_at_its_absolute_lifetime_however_used(owner: Browser, clock: FakeClock) -> None:
    for _ in range(20):
        clock.advance(50 * 60)
        status = owner.client.get("/api/auth/session").status_code
        if status == 401:
            break
    assert status == 401
    assert clock.now - 1_700_000_000.0 >= 12 * 3600


def test_session_cookie_is_not_a_stored_value(owner: Browser, store: AdminStore) -> None:
    token = owner.client.cookies.get(SESSION_COOKIE)
    assert token is not None
    raw = store.path.read_bytes() + (store.path.parent / "admin.db-wal").read_bytes()
    assert token.encode() not in raw


# -- password change --------------------------------------------------------------------------------------


def test_password_change_needs_the_current_password_and_ends_other_sessions(
    owner: Browser, app: FastAPI, clock: FakeClock
) -> None:
    with new_client(app) as phone:
        assert api_login(phone).status_code == 200
        r = owner.post(
            "/api/auth/password", json={"current_password": "not it at all", "new_password": "a new password"}
        )
        assert r.status_code == 403 and r.json() == {"error": "the current password is wrong"}
        clock.advance(5)
        r = owner.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "short"})
        assert r.status_code == 422
        r = owner.post(
            "/api/auth/password", json={"current_password": PASSWORD, "new_password": "a new password"}
        )
        assert r.status_code == 200 and r.json() == {"ok": True, "sessions_ended": 1}
        assert phone.get("/api/auth/session").status_code == 401
        assert owner.client.get("/api/auth/session").status_code == 200
        assert api_login(phone).status_code == 401
        clock.advance(5)
        assert api_login(phone, password="a new password").status_code == 200


def test_password_form(owner: Browser) -> None:
    page = owner.client.get("/password")
    assert page.status_code == 200
    token = form_token(page.text)
    data = {"csrf_token": token, "current_password": PASSWORD, "new_password": "another password"}
    r = owner.client.post("/password", data={**data, "new_password2": "different password"})
    assert r.status_code == 422 and "not the same" in r.text
    r = owner.client.post("/password", data={**data, "new_password2": "another password"})
    assert r.status_code == 200 and "Password changed" in r.text


def test_password_is_rehashed_when_parameters_change(
    owner: Browser, settings: Settings, store: AdminStore, clock: FakeClock
) -> None:
    before = store.owner()
    assert before is not None and "m=64,t=1,p=1" in before.password_hash
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=128, parallelism=1)
    app2 = create_app(settings, store=store, clock=clock, hasher=stronger, collector=FakeFeed())
    with TestClient(app2, base_url=BASE_URL) as c:
        assert api_login(c).status_code == 200
    after = store.owner()
    assert after is not None and "m=128,t=2,p=1" in after.password_hash
    assert after.password_changed_at == before.password_changed_at
    assert argon2.PasswordHasher().verify(after.password_hash, PASSWORD)


def test_script_login_flow_uses_the_csrf_endpoint(owner: Browser, app: FastAPI) -> None:
    with new_client(app) as script:
        assert (
            script.post("/api/auth/login", json={"username": USER, "password": PASSWORD}).status_code == 403
        )
        token = pre_session_token(script)
        r = script.post(
            "/api/auth/login", json={"username": USER, "password": PASSWORD}, headers={"X-CSRF-Token": token}
        )
        assert r.status_code == 200
        assert script.get("/api/status").status_code == 200
