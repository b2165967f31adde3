"""An API fuzz of the admin panel: schemathesis makes requests for every operation of the OpenAPI document,
logged in and not, and no answer may be a server error (5xx).

Why: the JSON API answers anyone on the LAN. A 5xx there is the app crashing on input someone chose (or an
unhandled case passed off as one), and the hand-written tests only try the inputs their authors thought of.

How:

- The document is the one the app serves at ``/api/openapi.json``, behind a session like every other API
  route, so it is fetched with the owner's session cookie (``schemathesis.openapi.from_asgi``); the cases
  are sent in-process to the same app (schemathesis's ASGI transport, which starts the app's lifespan; its
  pytest plugin ends the lifespan at each test's teardown, before the fixtures close the store).
- One test per operation and run, each with a fresh app, so what one operation leaves behind (a shown
  pairing code, a saved setting) never decides another's answers. The operations are listed when the module
  is collected, from the app's own document, and :func:`test_the_fuzz_covers_every_operation` checks that
  the document fetched with a session names the same ones. Hypothesis drives each operation directly
  (``APIOperation.as_strategy``): ``@schema.parametrize()`` on a schema built by a fixture (it must be:
  the document is behind a session) does not run under pytest 9, which no longer has ``Node._nodeid``.
- Both generation modes where the operation takes input: positive (valid by the schema) and negative (not),
  :data:`EXAMPLES` cases each (an operation without input has one case: there is nothing to vary),
  derandomized: the same cases every run, so a failure here is never luck.
- Logged in, every case gets a session of its own, made just before it (as by another browser): a case that
  logs out, or changes the password, ends or spoils only its own. The fake clock moves on two lock-out
  windows first, so failures earlier cases recorded (fuzzed logins, wrong current passwords) have aged out:
  otherwise the first wrong guess would lock out everything after it and the run would test the 429 only.
  A case that did change the password (only a steered one can, see below) has it put back.
- Not logged in, a case carries no session, only a pre-session CSRF pair (which ``GET /api/auth/csrf``
  hands anyone), so login and set-up are judged on their input; every other operation must answer 401.
- Steering: the schema says little of what the app checks first, so hardly any generated case would get
  past it. One positive case in three is given a well-formed pairing code (the right check digit) and an
  IP address or host name to join, the owner's user name and password to log in with, or the right current
  password to change; one in three gets a lone surrogate in one of its strings (a JSON escape such as
  ``"\\ud800"`` carries one, Python keeps it, UTF-8 cannot encode it, and Hypothesis's text never has one).

Side effects, kept in:

- Joining connects to the address given. :func:`network_guard` stops every IP connection and every name
  lookup the app tries, loopback included (no doorway shows a code during the fuzz, and a port that happens
  to be open on the test machine must not decide a case), before anything reaches the network; the app sees
  a refused connection or an unknown name, and answers its documented 502 "pairing failed". That 502, after
  the guard stopped an attempt, is the one 5xx allowed. The join test asserts the guard did stop attempts
  (so the fuzz reached the connecting code); every other test, that the app tried to reach nothing.
- A shown pairing code listens on loopback, on a free port (the settings file below).
- ``PUT /api/settings`` writes the settings file, in the test's temporary directory; afterwards it must
  still load with the services' own loader, with every key the API may not edit as it was.

Found by this fuzz, and fixed: a lone surrogate in ``audio.input_device`` or ``network.peer_host`` crashed
the settings write (500; now 422, tests/admin/test_settings_page.py).
"""

from __future__ import annotations

import errno
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import argon2
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error

from admin import routes
from admin.app import create_app
from admin.routes.settings import EDITABLE
from admin.security import (
    CSRF_COOKIE,
    CSRF_HEADER,
    PASSWORD_MIN,
    SESSION_COOKIE,
    Auth,
    Passwords,
)
from admin.store import AdminStore
from admin.web import AdminContext
from app.pairing.code import damm_digit, format_code
from app.settings import Settings, load_settings
from tests.admin.conftest import BASE_URL, PASSWORD, USER, FakeClock, setup_code

EXAMPLES: Final = 25
"""Cases per operation and generation mode (the whole file takes about 30 s on two cores)."""
CLIENT: Final = "testclient"
"""The client address schemathesis's ASGI transport gives the app (lock-outs count against it)."""

Operation = APIOperation[Any, Any, Any, Any]
CaseTest = Callable[[Case[Any], st.DataObject, GenerationMode], None]
"""What runs one case: ``test(case, data, mode)`` (``data`` draws the steering)."""

LOGIN: Final = ("POST", "/api/auth/login")
SETUP: Final = ("POST", "/api/auth/setup")
PASSWORD_CHANGE: Final = ("POST", "/api/auth/password")
JOIN: Final = ("POST", "/api/pairing/join")


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in the app's OpenAPI document."""
    document = create_app(Settings()).openapi()
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


OPERATIONS: Final = _operations()
PUBLIC: Final = frozenset(
    (method, route.path)
    for router in routes.PUBLIC
    for route in router.routes
    if isinstance(route, APIRoute) and route.include_in_schema
    for method in route.methods or ()
)
"""The operations the app answers without a session (its own list, ``admin.routes.PUBLIC``)."""


# -- the app under fuzz -------------------------------------------------------------------------------------


@pytest.fixture
def settings(config_path: Path, tmp_path: Path, sock_dir: Path) -> Settings:
    """The conftest's settings, from a file: ``PUT /api/settings`` rewrites it and the panel then follows
    the file, so the state directory, the sockets and a pairing listener on loopback must be in it."""
    config_path.parent.mkdir()
    config_path.write_text(
        "# Written by tests/admin/test_fuzz.py.\n"
        "[engine]\n"
        f'state_dir = "{tmp_path / "state"}"\n'
        f'control_socket = "{sock_dir / "engine.sock"}"\n'
        "\n[hwcontrol]\n"
        f'control_socket = "{sock_dir / "hwcontrol.sock"}"\n'
        "\n[pairing]\n"
        'listen_host = "127.0.0.1"\n'
        "port = 0\n",
        encoding="utf-8",
    )
    return load_settings(config_path)


@pytest.fixture
def backends(settings: Settings, serve_socket: Any) -> None:
    """The engine and the bridge answering, so that their 502/503 (which say plainly that one is down or
    refused) are not what the logged-in fuzz meets. (Logged out, nothing gets as far as asking them; and each
    costs about half a second to stop.)"""
    serve_socket(
        settings.engine.control_socket,
        {
            "status": lambda args: {"state": "idle"},
            "stats": lambda args: {"uptime_s": 1.0},
            "set_bitrate": lambda args: {"kbps": args.get("kbps")},
            # Started and finished at once: nothing runs, so every case of a run may start one.
            "calibrate": lambda args: {"state": "running", "step": args.get("step"), "progress": 0.0},
            "calibration": lambda args: {"state": "idle", "step": None, "progress": 0.0, "message": ""},
            "calibration_cancel": lambda args: {"cancelled": False},
        },
    )
    serve_socket(
        settings.hwcontrol.control_socket,
        {
            "status": lambda args: {"state": "ready", "message": "ready", "lights": {}, "scene": 2},
            "sensors": lambda args: {"sensors": {"age_s": 0.5, "lux": 100.0}},
            "set_light": lambda args: {"queued": True, "state": "ready"},
            "set_scene": lambda args: {"queued": True, "state": "ready"},
        },
    )


@dataclass
class NetworkGuard:
    """What the app tried to reach over IP; every attempt was stopped before it left the process."""

    stopped: list[str] = field(default_factory=list)


@pytest.fixture
def network_guard(monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
    """Stop IP connections and name lookups (see the module docstring). Unix sockets (the engine's and the
    bridge's) pass."""
    guard = NetworkGuard()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        # The real call, numbers only: an address is parsed as ever (bad ones fail as they would), and a
        # name fails at once instead of becoming a query to a DNS server off this machine.
        try:
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            guard.stopped.append(f"lookup of {host!r}")
            raise

    def refuse(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        guard.stopped.append(f"connection to {address!r}")
        return True

    def connect(sock: socket.socket, address: Any) -> None:
        if refuse(sock, address):
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused (by the fuzz test)")
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        return errno.ECONNREFUSED if refuse(sock, address) else real_connect_ex(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return guard


@dataclass
class Fuzz:
    """An app with an owner, its OpenAPI schema (bound to it), and what the cases need around them."""

    schema: schemathesis.BaseSchema
    app: FastAPI
    settings: Settings
    config_path: Path
    clock: FakeClock
    guard: NetworkGuard
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def ctx(self) -> AdminContext:
        ctx = self.app.state.admin
        assert isinstance(ctx, AdminContext), "the app's lifespan is not running"
        return ctx

    def let_time_pass(self) -> None:
        """Two lock-out windows: every failure recorded so far has aged out (see the module docstring)."""
        self.clock.advance(2 * self.settings.admin.lockout_minutes * 60.0 + 1.0)

    def login(self) -> tuple[str, str]:
        """A new session of the owner's: (cookie token, CSRF token)."""
        self.let_time_pass()
        token, session = self.ctx.auth.login(USER, PASSWORD, CLIENT)
        return token, session.csrf_token

    def restore_password(self) -> None:
        """Put the owner's password back after a case changed it (so the next case can log in)."""
        ctx = self.ctx
        ctx.store.set_password_hash(ctx.auth.passwords.hash(PASSWORD), self.clock(), keep_session=None)

    def run(self, operation: Operation, test: CaseTest) -> None:
        """``test(case, data, mode)`` for :data:`EXAMPLES` cases of ``operation`` in each generation mode that
        can make any (negative cases need some input to get wrong)."""
        takes_input = bool(operation.body) or any(
            len(params) for params in (operation.query, operation.path_parameters, operation.headers)
        )
        modes = (
            [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]
        )
        for mode in modes:
            _fuzz_mode(operation, mode, test)


def _fuzz_mode(operation: Operation, mode: GenerationMode, test: CaseTest) -> None:
    # deadline None: time is not under test, and the first case of a run (or one whose request builds the
    # diagnostics zip) may take longer than Hypothesis's default 200 ms. No health check is suppressed: none
    # fires.
    @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None)
    @hypothesis.given(case=operation.as_strategy(mode), data=st.data())
    def fuzz_case(case: Case[Any], data: st.DataObject) -> None:
        test(case, data, mode)

    fuzz_case()


@pytest.fixture
def fuzz(
    app: FastAPI,
    settings: Settings,
    store: AdminStore,
    clock: FakeClock,
    hasher: argon2.PasswordHasher,
    config_path: Path,
    network_guard: NetworkGuard,
) -> Fuzz:
    """The conftest's app with an owner, and the OpenAPI document it serves to the owner's session."""
    # The owner, made with a setup code as the set-up page does (the app is not started yet).
    auth = Auth(store, settings.admin, clock, Passwords(hasher))
    token, _ = auth.setup(setup_code(store, clock, hasher), USER, PASSWORD, CLIENT)
    schema = schemathesis.openapi.from_asgi(
        "/api/openapi.json", app, headers={"Cookie": f"{SESSION_COOKIE}={token}"}
    )
    return Fuzz(schema, app, settings, config_path, clock, network_guard)


def test_the_fuzz_covers_every_operation(fuzz: Fuzz) -> None:
    # The document the fuzz got through the session is the one the operations were listed from.
    paths = fuzz.schema.raw_schema["paths"]
    assert [(method.upper(), path) for path, item in paths.items() for method in item] == OPERATIONS
    public = {
        ("GET", "/api/auth/csrf"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/setup"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    }
    assert public == PUBLIC


# -- steering and judging -----------------------------------------------------------------------------------

PAIRING_CODES: Final = st.text("0123456789", min_size=7, max_size=7).map(
    lambda s: format_code(s + damm_digit(s))
)
"""Pairing codes with the right check digit: the only ones a join sends on (a fuzzed one is a typo)."""
PORTS: Final = st.integers(1, 65535)
ADDRESSES: Final = st.one_of(
    st.builds("{}:{}".format, st.ip_addresses(v=4), PORTS),
    st.builds("[{}]:{}".format, st.ip_addresses(v=6), PORTS),
    st.builds(
        "{}:{}".format, st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z]{2,8}){0,2}", fullmatch=True), PORTS
    ),
)
"""Where to join: IPv4 and IPv6 addresses of every kind (loopback, private, public) and host names (which need
a lookup), each with a port (here ``pairing.port`` is 0, so there is no default one)."""
LONE_SURROGATES: Final = st.builds(
    "{}{}{}".format, st.text(max_size=4), st.characters(categories=["Cs"]), st.text(max_size=4)
)


def _texts(value: Any) -> Iterator[tuple[dict[str, Any] | list[Any], Any]]:
    """(container, key) of every string in a JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, str):
            yield value, key
        else:
            yield from _texts(item)


def steer(case: Case[Any], data: st.DataObject) -> None:
    """Take a positive case's JSON body, one time in three, past the app's first checks, and one time in
    three give one of its strings a lone surrogate (see the module docstring); in place."""
    body = case.body
    if not isinstance(body, dict):
        return
    how = data.draw(
        st.sampled_from(("as generated", "past the first checks", "a lone surrogate")), label="steer"
    )
    operation = (case.method.upper(), case.path)
    if how == "past the first checks" and operation == JOIN:
        body["code"] = data.draw(PAIRING_CODES, label="code")
        body["address"] = data.draw(ADDRESSES, label="address")
    elif how == "past the first checks" and operation == LOGIN:
        # The right password: the generated cases already try wrong ones (and the owner's name is rare).
        body["username"] = USER
        body["password"] = PASSWORD
    elif how == "past the first checks" and operation == PASSWORD_CHANGE:
        body["current_password"] = PASSWORD
        body["new_password"] = data.draw(
            st.text(min_size=PASSWORD_MIN - 1, max_size=80), label="new password"
        )
    elif how == "a lone surrogate" and (texts := list(_texts(body))):
        container, key = texts[data.draw(st.integers(0, len(texts) - 1), label="which string")]
        container[key] = data.draw(LONE_SURROGATES, label="text")


def error_of(response: Response) -> str:
    """The ``{"error": ...}`` message of a refusal ("" for anything else)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def check_no_server_error(fuzz: Fuzz, case: Case[Any], response: Response, stopped_before: int) -> None:
    """schemathesis's own check, but for a failed join after the guard stopped its connection: with no
    doorway to pair with anywhere, 502 "pairing failed" is the documented answer."""
    fuzz.statuses[response.status_code] += 1
    if (
        (case.method.upper(), case.path) == JOIN
        and response.status_code == 502
        and len(fuzz.guard.stopped) > stopped_before
        and error_of(response).startswith("pairing failed: ")
    ):
        return
    case.validate_response(response, checks=[not_a_server_error])


def check_settings_file(fuzz: Fuzz) -> None:
    """The file still loads with the services' loader, and every key the API may not edit is as it was."""
    after = load_settings(fuzz.config_path).model_dump(mode="json")
    before = fuzz.settings.model_dump(mode="json")
    # The settings page's keys, and the lighting page's "match the far side".
    editable = {(e.section, e.key) for e in EDITABLE} | {("lighting", "match_far_side")}
    for section, values in before.items():
        for key, value in values.items():
            if (section, key) not in editable:
                assert after[section][key] == value, f"{section}.{key} changed"


def check_network(fuzz: Fuzz, method: str, path: str) -> None:
    if (method, path) == JOIN:
        assert fuzz.guard.stopped, "no join got as far as connecting: the containment went untested"
    else:
        assert fuzz.guard.stopped == [], f"{method} {path} tried to reach the network"


def operation_id(operation: tuple[str, str]) -> str:
    return " ".join(operation)


# -- the runs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[operation_id(op) for op in OPERATIONS])
def test_no_server_error_logged_in(fuzz: Fuzz, backends: None, method: str, path: str) -> None:
    def test(case: Case[Any], data: st.DataObject, mode: GenerationMode) -> None:
        token, csrf = fuzz.login()
        if mode is GenerationMode.POSITIVE:
            steer(case, data)
        stopped = len(fuzz.guard.stopped)
        response = case.call(base_url=BASE_URL, headers={CSRF_HEADER: csrf}, cookies={SESSION_COOKIE: token})
        if (method, path) == PASSWORD_CHANGE and response.status_code == 200:
            fuzz.restore_password()
        # A refusal for want of a session or CSRF token (or a lock-out) would mean the case tested nothing.
        error = error_of(response)
        assert response.status_code != 429, f"locked out: {error}"
        assert not (response.status_code == 401 and "not logged in" in error), error
        assert not (response.status_code == 403 and ("CSRF" in error or "cross-site" in error)), error
        check_no_server_error(fuzz, case, response, stopped)

    fuzz.run(fuzz.schema[path][method], test)
    # Some case of each operation got as far as the work of the route: a 2xx. Not set-up (closed for good:
    # the owner exists) nor a join (there is no doorway to pair with).
    if (method, path) not in (SETUP, JOIN):
        assert any(200 <= status < 300 for status in fuzz.statuses), dict(fuzz.statuses)
    check_network(fuzz, method, path)
    check_settings_file(fuzz)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[operation_id(op) for op in OPERATIONS])
def test_no_server_error_logged_out(fuzz: Fuzz, method: str, path: str) -> None:
    settings_file = fuzz.config_path.read_bytes()

    def test(case: Case[Any], data: st.DataObject, mode: GenerationMode) -> None:
        fuzz.let_time_pass()  # Fuzzed logins and set-ups count against this client too.
        if mode is GenerationMode.POSITIVE:
            steer(case, data)
        # The double-submit pair anyone gets from GET /api/auth/csrf: only the session is missing.
        pair = secrets.token_urlsafe(32)
        stopped = len(fuzz.guard.stopped)
        response = case.call(base_url=BASE_URL, headers={CSRF_HEADER: pair}, cookies={CSRF_COOKIE: pair})
        if (method, path) not in PUBLIC:
            # FastAPI reads the body before the route's dependencies run, so a body it cannot read (not
            # JSON at all, or not text) is refused as such before the session is looked at; nothing else
            # gets that far.
            error = error_of(response)
            unreadable = "parsing the body" in error or "JSON decode error" in error
            assert response.status_code == 401 or (response.status_code in (400, 422) and unreadable), error
        check_no_server_error(fuzz, case, response, stopped)

    fuzz.run(fuzz.schema[path][method], test)
    assert fuzz.guard.stopped == [], "logged out, nothing may get as far as the network"
    # Nothing changed: the settings file, and pairing.
    assert fuzz.config_path.read_bytes() == settings_file
    assert fuzz.ctx.pairing.status().state == "idle" and fuzz.ctx.pairing.twin() is None
