"""Who may use the admin panel: the owner's password, the one-time setup code, sessions, CSRF, lock-outs.

Everything here is plain Python over :class:`admin.store.AdminStore` and an injected clock (Unix seconds),
so the rules are tested without HTTP and without waiting; :mod:`admin.deps` and :mod:`admin.routes.auth`
put them on the web.

Theory of operation
-------------------
*No default password.* A doorway has no account until someone creates the owner with the one-time setup
code. The code (:func:`new_setup_code`) is 16 digits in four groups, "1234-5678-9012-3456": 15 random digits
(49.8 bits) and a Damm check digit (the pairing code's, :mod:`app.pairing.code`), so a typo is reported
as a typo and does not count as a wrong guess. It is shown once (printed by ``doorway admin setup-code`` or
made at provisioning), stored only as an argon2 hash, expires after 24 h (:data:`SETUP_CODE_TTL_S`) and is
consumed in the same transaction that creates the owner. Once an owner exists no code can be stored or
used: set-up is closed for good. Wrong codes count against the client like wrong passwords, so guessing
50 bits at a handful of tries per quarter hour is hopeless.

*Passwords* are hashed with argon2id at argon2-cffi's default parameters (64 MiB, 3 passes, 4 lanes: about
0.1–0.5 s on a doorway). A hash made with other parameters is rehashed at the next successful login. At
most :data:`HASH_SLOTS` hashes run at once, because each needs 64 MiB and a flood of logins must not run
the appliance out of memory. A login for a user name that does not exist verifies against a dummy hash, so
the answer takes as long as a wrong password and does not reveal the name.

*Sessions.* A successful login makes a random 32-byte token, sent as the ``doorway_session`` cookie
(HttpOnly: scripts cannot read it; Secure: never sent over plain HTTP; SameSite=Strict: never sent on a
request another site starts; Path=/). Only the token's SHA-256 is stored. A session ends when it has been
idle for ``admin.session_idle_minutes``, ``admin.session_max_hours`` after login whatever happens, at
logout (deleted on the server, not just in the browser), and when the password changes (every session but
the one that changed it). Last-seen is written at most once a minute (:data:`TOUCH_INTERVAL_S`): each
write is an fsync, and a page that polls must not make one per request. At most :data:`MAX_SESSIONS`
sessions live at once; a new login ends the oldest.

*CSRF.* Cookies are sent by the browser on its own, so every state-changing request (POST, PUT, PATCH,
DELETE) must also carry a token that another site cannot know: the header ``X-CSRF-Token`` (the JSON API;
``admin.js`` adds it to ``fetch`` and ``XMLHttpRequest``) or the form field ``csrf_token`` (HTML forms).
With a session, the token is the session's own (random, stored with it, written into every page as
``<meta name="csrf-token">``). Without one — the login and set-up forms — it is a double-submit token:
a random value in the ``__Host-doorway_csrf`` cookie (HttpOnly, Secure, SameSite=Strict) that the form
must repeat, which stops a foreign page from logging the browser into an account of the attacker's
choosing ("login CSRF"). Tokens are compared with :func:`hmac.compare_digest`. As a second line, an
``Origin`` (or, without one, ``Referer``) header naming another host than the request's ``Host`` is
refused. ``Origin: null`` is treated as absent: browsers send exactly that on our own form posts because
every page is served with ``Referrer-Policy: no-referrer``, and the token check still applies.

*Lock-out.* Failed logins (and wrong setup codes, and wrong current passwords on a password change) are
recorded per client address and per user name. Counting both stops one client trying many names and many
clients trying one name. After each failure the next try must wait 1, 2, 4, 8 … s (at most
:data:`MAX_DELAY_S`), and ``admin.login_max_failures`` failures within ``admin.lockout_minutes`` lock the
bucket for ``admin.lockout_minutes`` after the last one (then the next ``login_max_failures`` tries are
fresh). While locked, even the right password is refused
(otherwise the lock-out would only slow guessing, not stop it) and attempts are not counted, so the owner
is locked out for exactly the stated time and no longer. The refusal says when to try again and carries
``Retry-After``. A successful login clears both buckets. State lives in the database, so restarting the
process does not reset a lock-out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from admin.store import AdminStore, SessionRow, SetupClosedError, SetupCodeChangedError
from app.pairing.code import damm_digit
from app.settings import AdminSettings

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Returns the time in Unix seconds (``time.time`` in service; a fake in tests)."""

SESSION_COOKIE: Final = "doorway_session"
"""Name of the session cookie."""
CSRF_COOKIE: Final = "__Host-doorway_csrf"
"""Name of the pre-session (double-submit) CSRF cookie used by the login and set-up forms. The ``__Host-``
prefix makes browsers accept it only from HTTPS, for this exact host, with Path=/: someone who can answer
the plain-HTTP port cannot plant a value they know."""
CSRF_FIELD: Final = "csrf_token"
"""Form field that carries the CSRF token."""
CSRF_HEADER: Final = "X-CSRF-Token"
"""Header that carries the CSRF token (JSON API, ``fetch``)."""
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods that change nothing and so need no CSRF token."""

SETUP_CODE_TTL_S: Final = 24 * 3600
"""How long a setup code is valid after it is made, in seconds (24 h)."""
SETUP_SECRET_DIGITS: Final = 15
"""Random digits in a setup code (49.8 bits); a 16th is the check digit."""
SETUP_CODE_DIGITS: Final = SETUP_SECRET_DIGITS + 1
"""Digits in a setup code, check digit included."""

USERNAME_MAX: Final = 64
"""Longest user name, in characters."""
PASSWORD_MIN: Final = 10
"""Shortest password, in characters."""
PASSWORD_MAX: Final = 1024
"""Longest password, in characters (bounds the hashing work one request can cause)."""

TOUCH_INTERVAL_S: Final = 60.0
"""A session's last-seen time is written at most this often, in seconds (the idle timeout's resolution)."""
MAX_SESSIONS: Final = 20
"""Most sessions alive at once; a new login ends the oldest beyond this."""
MAX_DELAY_S: Final = 60.0
"""Longest wait between two tries before the lock-out, in seconds."""
HASH_SLOTS: Final = 2
"""Most argon2 computations at once (each needs 64 MiB at default parameters)."""

_TOKEN_BYTES: Final = 32


class AuthError(Exception):
    """A refusal to show the person: HTTP ``status``, a one-sentence ``message``, and for 429 ``retry_after``
    (whole seconds)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


# -- passwords ----------------------------------------------------------------------------------------------


class Passwords:
    """argon2id hashing with a cap on concurrent work. Thread-safe; every method may block for ~0.5 s."""

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or argon2.PasswordHasher()
        self._slots = threading.BoundedSemaphore(HASH_SLOTS)
        self._dummy: str | None = None

    def hash(self, secret: str) -> str:
        """The PHC string (``$argon2id$v=19$m=…``) of ``secret``, with a fresh salt."""
        with self._slots:
            return self._hasher.hash(secret)

    def verify(self, stored: str, secret: str) -> bool:
        """Whether ``secret`` matches the stored hash. A damaged hash is a mismatch (and logged)."""
        with self._slots:
            try:
                return self._hasher.verify(stored, secret)
            except VerifyMismatchError:
                return False
            except (InvalidHashError, VerificationError) as exc:
                log.error("stored password hash cannot be checked: %s", exc)
                return False

    def verify_dummy(self, secret: str) -> None:
        """Spend as long as :meth:`verify` does, for a user that does not exist."""
        if self._dummy is None:
            self._dummy = self.hash("no such user; this hash only burns time")
        self.verify(self._dummy, secret)

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than this hasher's."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True


def check_username(name: str) -> str:
    """The user name to store (surrounding spaces removed); raises :class:`AuthError` (422) when unusable."""
    name = name.strip()
    if not 1 <= len(name) <= USERNAME_MAX:
        raise AuthError(422, f"the user name must be 1 to {USERNAME_MAX} characters long")
    if any(not ch.isprintable() for ch in name):
        raise AuthError(422, "the user name must not contain control characters")
    return name


def check_new_password(password: str, username: str | None = None) -> None:
    """Raise :class:`AuthError` (422) when ``password`` is too weak to store."""
    if len(password) < PASSWORD_MIN:
        raise AuthError(422, f"the password must be at least {PASSWORD_MIN} characters long")
    if len(password) > PASSWORD_MAX:
        raise AuthError(422, f"the password must be at most {PASSWORD_MAX} characters long")
    if username is not None and password.strip().casefold() == username.strip().casefold():
        raise AuthError(422, "the password must not be the user name")


# -- setup code ---------------------------------------------------------------------------------------------


def new_setup_code() -> str:
    """A fresh setup code: 15 random digits and their Damm check digit, 16 digits without separators."""
    secret = "".join(str(secrets.randbelow(10)) for _ in range(SETUP_SECRET_DIGITS))
    return secret + damm_digit(secret)


def format_setup_code(code: str) -> str:
    """The code as shown and typed: ``1234-5678-9012-3456``."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def parse_setup_code(text: str) -> str:
    """The 16 digits in ``text`` (spaces and dashes ignored); raises :class:`AuthError` (422) with a
    message for people when it is not a setup code or has a typo."""
    cleaned = "".join(ch for ch in text if ch not in " -\t")
    if not cleaned.isascii() or not cleaned.isdigit() or len(cleaned) != SETUP_CODE_DIGITS:
        raise AuthError(
            422, f"a setup code is {SETUP_CODE_DIGITS} digits, like 1234-5678-9012-3456; check what you typed"
        )
    if damm_digit(cleaned) != "0":
        raise AuthError(422, "the setup code has a typo (its check digit does not match); check it again")
    return cleaned


def issue_setup_code(store: AdminStore, passwords: Passwords, now: float) -> str:
    """Make a setup code, store its hash (replacing any earlier one) and return it, to be shown once.

    Raises :class:`admin.store.SetupClosedError` when the owner account exists.
    """
    if store.owner() is not None:
        raise SetupClosedError(f"{store.path}: the owner account exists; set-up is closed")
    code = new_setup_code()
    store.set_setup_code(passwords.hash(code), now, now + SETUP_CODE_TTL_S)
    return code


# -- CSRF ---------------------------------------------------------------------------------------------------


def new_token() -> str:
    """A random URL-safe token of 32 bytes (CSRF tokens and session tokens)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    """SHA-256 of a session token, as stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two tokens; an empty or missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape")
    )


def foreign_origin(origin: str | None, referer: str | None, host: str | None) -> str | None:
    """The origin a request came from when it names another host than ``host`` (the ``Host`` header), else
    None. ``Origin`` wins over ``Referer``; ``Origin: null`` counts as absent (see the module docstring)."""
    source = origin if origin and origin != "null" else referer
    if not source:
        return None
    try:
        netloc = urlsplit(source).netloc
    except ValueError:
        return source
    if not host or netloc.lower() != host.lower():
        return source
    return None


# -- lock-out -----------------------------------------------------------------------------------------------


class RateLimiter:
    """Failed attempts per client address and per user name; see the module docstring for the rules."""

    def __init__(self, store: AdminStore, max_failures: int, lockout_s: float, clock: Clock) -> None:
        self.store = store
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock

    def _buckets(self, client: str, username: str | None) -> list[tuple[str, str]]:
        buckets = [("client", client)]
        if username:
            buckets.append(("user", username[:USERNAME_MAX]))
        return buckets

    def _state(self, times: list[float], now: float) -> tuple[float, float]:
        """(locked until, must wait until) for one bucket's failure times, oldest first.

        A lock-out is ``max_failures`` failures within one window; it lasts a window after the last of
        them, even as the earlier ones age out (so the stored history reaches two windows back). The
        failures since the last lock-out, within a window, set the wait before the next try.
        """
        n, w = self.max_failures, self.lockout_s
        locked_until = 0.0
        counted_from = now - w
        for i in range(n - 1, len(times)):
            if times[i] - times[i - n + 1] <= w:
                locked_until = max(locked_until, times[i] + w)
                counted_from = max(counted_from, times[i])
        recent = [t for t in times if t > counted_from]
        wait_until = recent[-1] + min(2.0 ** (len(recent) - 1), MAX_DELAY_S) if recent else 0.0
        return locked_until, wait_until

    def check(self, client: str, username: str | None = None) -> None:
        """Raise :class:`AuthError` (429) when this client or name must not try now."""
        now = self.clock()
        locked_until = 0.0
        wait_until = 0.0
        for kind, key in self._buckets(client, username):
            times = self.store.failures(kind, key, now - 2 * self.lockout_s)
            locked, wait = self._state(times, now)
            locked_until = max(locked_until, locked)
            wait_until = max(wait_until, wait)
        if now < locked_until:
            retry = math.ceil(locked_until - now)
            at = time.strftime("%H:%M", time.localtime(locked_until))
            minutes = max(1, math.ceil(retry / 60))
            raise AuthError(
                429,
                f"too many failed attempts: logging in is locked; try again at {at} "
                f"(in {minutes} minute{'s' if minutes != 1 else ''})",
                retry,
            )
        if now < wait_until:
            retry = math.ceil(wait_until - now)
            raise AuthError(429, f"too many failed attempts in a row; wait {retry} s and try again", retry)

    def failed(self, client: str, username: str | None = None) -> None:
        """Count one failed attempt against the client and (when given) the user name."""
        now = self.clock()
        for kind, key in self._buckets(client, username):
            self.store.add_failure(kind, key, now, prune_before=now - 2 * self.lockout_s)

    def succeeded(self, client: str, username: str) -> None:
        """Forget the failures of this client and user name."""
        for kind, key in self._buckets(client, username):
            self.store.clear_failures(kind, key)


# -- sessions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A live login session, as routes see it. Times are Unix seconds."""

    username: str
    token_hash: bytes
    csrf_token: str
    created_at: float
    expires_at: float
    """Absolute end: ``created_at`` + ``admin.session_max_hours``."""
    last_seen: float


class Auth:
    """The admin panel's security service: one per app, shared by every request thread.

    Methods block (SQLite, argon2): call them from sync route functions, which FastAPI runs in its thread
    pool, never from ``async def`` code directly.
    """

    def __init__(
        self,
        store: AdminStore,
        settings: AdminSettings,
        clock: Clock = time.time,
        passwords: Passwords | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.passwords = passwords or Passwords()
        self.idle_s = settings.session_idle_minutes * 60.0
        self.max_s = settings.session_max_hours * 3600.0
        self.limiter = RateLimiter(store, settings.login_max_failures, settings.lockout_minutes * 60.0, clock)

    # -- set-up -------------------------------------------------------------------------------------------

    def needs_setup(self) -> bool:
        """True until the owner account exists."""
        return self.store.owner() is None

    def setup(self, code_text: str, username: str, password: str, client: str) -> tuple[str, Session]:
        """Create the owner with the setup code and log them in; return (cookie token, session).

        Raises :class:`AuthError`: 409 set-up closed, 403 no / wrong / expired code, 422 bad input, 429.
        """
        if not self.needs_setup():
            raise AuthError(409, "the owner account already exists; log in instead")
        self.limiter.check(client)
        code = parse_setup_code(code_text)
        username = check_username(username)
        check_new_password(password, username)
        stored = self.store.setup_code()
        if stored is None:
            raise AuthError(403, "no setup code has been made; run `doorway admin setup-code` on the doorway")
        now = self.clock()
        if now >= stored.expires_at:
            raise AuthError(403, "the setup code has expired; make a new one with `doorway admin setup-code`")
        if not self.passwords.verify(stored.code_hash, code):
            self.limiter.failed(client)
            log.warning("set-up: wrong setup code from %s", client)
            raise AuthError(403, "the setup code is wrong")
        try:
            self.store.create_owner(username, self.passwords.hash(password), stored.code_hash, now)
        except SetupClosedError:
            raise AuthError(409, "the owner account already exists; log in instead") from None
        except SetupCodeChangedError:
            raise AuthError(403, "the setup code was used or replaced meanwhile") from None
        log.info("set-up: owner %r created from %s", username, client)
        self.limiter.succeeded(client, username)
        return self._new_session(username, client, now)

    # -- login, logout, password --------------------------------------------------------------------------

    def login(self, username: str, password: str, client: str) -> tuple[str, Session]:
        """Check the password and start a session; return (cookie token, session).

        Raises :class:`AuthError`: 409 when there is no owner yet, 401 wrong name or password, 429 locked.
        """
        owner = self.store.owner()
        if owner is None:
            raise AuthError(409, "this doorway has no owner account yet; set it up first")
        name = username.strip()
        self.limiter.check(client, name)
        if name == owner.username and len(password) <= PASSWORD_MAX:
            ok = self.passwords.verify(owner.password_hash, password)
        else:
            # Same cost as a real check, so the time taken does not tell whether the name exists.
            self.passwords.verify_dummy(password[:PASSWORD_MAX])
            ok = False
        if not ok:
            self.limiter.failed(client, name)
            # Never log the name tried: people type their password into the wrong field.
            who = "the owner" if name == owner.username else "an unknown user name"
            log.warning("login: wrong password for %s from %s", who, client)
            raise AuthError(401, "wrong user name or password")
        self.limiter.succeeded(client, name)
        now = self.clock()
        if self.passwords.needs_rehash(owner.password_hash):
            self.store.set_password_hash(self.passwords.hash(password), now, keep_session=None, changed=False)
            log.info("login: password rehashed with the current argon2 parameters")
        self.store.prune_sessions(now, self.idle_s)
        log.info("login: %r from %s", name, client)
        return self._new_session(owner.username, client, now)

    def logout(self, session: Session) -> None:
        """End ``session`` on the server (its cookie no longer works anywhere)."""
        self.store.delete_session(session.token_hash)

    def change_password(self, session: Session, current: str, new: str, client: str) -> int:
        """Replace the password (the current one must be right) and end every other session.

        Returns how many other sessions ended. Raises :class:`AuthError`: 403 wrong current password,
        422 weak new password, 429 locked (wrong current passwords count like failed logins).
        """
        owner = self.store.owner()
        if owner is None:
            raise AuthError(409, "this doorway has no owner account")
        self.limiter.check(client, owner.username)
        if len(current) > PASSWORD_MAX or not self.passwords.verify(owner.password_hash, current):
            self.limiter.failed(client, owner.username)
            raise AuthError(403, "the current password is wrong")
        check_new_password(new, owner.username)
        if new == current:
            raise AuthError(422, "the new password is the same as the current one")
        ended = self.store.set_password_hash(
            self.passwords.hash(new), self.clock(), keep_session=session.token_hash
        )
        log.info("password changed from %s; %d other session(s) ended", client, ended)
        return ended

    # -- sessions -----------------------------------------------------------------------------------------

    def session(self, token: str | None) -> Session | None:
        """The live session a cookie's token names, or None (absent, unknown, idle too long or expired).

        An expired session is deleted when met. Refreshes last-seen at most every :data:`TOUCH_INTERVAL_S`.
        """
        if not token or len(token) > 128:
            return None
        h = token_hash(token)
        row = self.store.session(h)
        if row is None:
            return None
        now = self.clock()
        if now >= row.expires_at or now >= row.last_seen + self.idle_s:
            self.store.delete_session(h)
            return None
        owner = self.store.owner()
        if owner is None:
            return None
        last_seen = row.last_seen
        if now - row.last_seen >= TOUCH_INTERVAL_S:
            self.store.touch_session(h, now)
            last_seen = now
        return Session(owner.username, h, row.csrf_token, row.created_at, row.expires_at, last_seen)

    def _new_session(self, username: str, client: str, now: float) -> tuple[str, Session]:
        token = new_token()
        row = SessionRow(
            token_hash=token_hash(token),
            csrf_token=new_token(),
            client=client[:64],
            created_at=now,
            last_seen=now,
            expires_at=now + self.max_s,
        )
        self.store.add_session(row, max_sessions=MAX_SESSIONS)
        return token, Session(username, row.token_hash, row.csrf_token, now, row.expires_at, now)
