"""The admin panel in a real browser: Debian's chromium, headless, driven by Playwright.

Two doorways run on this machine as on two appliances, each an engine, a room controller (the MCU emulator
on a pseudo-terminal and the hwcontrol bridge) and an admin panel as processes of their own, with one
settings file between them and fresh state (no owner, no twin). Through the panels alone, the browser claims
each doorway with its setup code, pairs the two (a code shown on one, typed on the other), watches the call
come up on both overviews, sets the lights and reads the room's sensors, runs the camera and lighting
calibrations on the engine and sees their results and the snapshot, changes a setting (and is refused a bad
one), logs out and in again, unpairs, and saves a screenshot of every page at desktop width and on a
phone into ``out/screenshots/`` (kept as test artifacts).

The TestClient tests prove the routes; only a browser proves the pages as people get them: that the scripts
run under the Content-Security-Policy without an error, the forms post with their CSRF tokens, pairing.js
reloads when the other doorway joins, the live overview's event stream opens, the phone menu folds, and that
nothing is fetched from anywhere but the doorway itself. So every page is checked for its status, console
errors and uncaught exceptions, and every request the browser made for its origin.

Everything listens on 127.0.0.1 only. Every wait is for something to appear (generous, for a busy
two-core machine), never a fixed sleep.
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Response,
    ViewportSize,
    expect,
    sync_playwright,
)

from app.launch import (
    EngineProcess,
    admin_setup_code,
    free_tcp_ports,
    free_udp_ports,
    start_admin,
    start_child,
    start_room_controller,
    stop_engines,
    to_toml,
    wait_https,
)
from app.settings import load_settings

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: no sandbox (containers and CI run as root), no GPU, and none of chromium's own calls
# home, so the only traffic is the browser's to the panels.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
VIEWPORTS: dict[str, ViewportSize] = {
    "desktop": {"width": 1280, "height": 800},
    "phone": {"width": 390, "height": 844},
}
WAIT_MS = 30_000
"""How long any one thing may take to appear: the machine runs two engines, two panels and chromium on two
cores, and a cold panel's first page or a pairing can take seconds there."""
START_S = 60.0
"""How long the eight processes may take to start (imports of av and numpy, key and certificate making)."""
USER = "owner"
PASSWORD = "correct horse battery"

# Playwright's assertions wait 5 s by default; here everything gets the same generous limit.
expect.set_options(timeout=WAIT_MS)


@dataclass
class Doorway:
    """One doorway's processes (engine, room controller, admin panel), settings file, state and setup code."""

    name: str
    config: Path
    state_dir: Path
    https_port: int
    setup_code: str = ""
    procs: list[EngineProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def tails(self, lines: int = 25) -> str:
        """The end of each process's log, for a failure's message."""
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(lines)}" for p in self.procs)


def doorway_settings(d: Doorway, media_port: int, sock_dir: Path, mcu: Path) -> dict[str, dict[str, Any]]:
    """The one settings file all of a doorway's processes read, as on an appliance: a small picture and
    no sound (light on two cores), and every listener on loopback. No peer address: the engine learns its
    twin's from the pairing, as in the field. Pairing port 0: the panel shows the port it got."""
    return {
        "engine": {"name": d.name, "state_dir": str(d.state_dir),
                   "control_socket": str(sock_dir / f"{d.name}-engine.sock")},
        "capture": {"backend": "synthetic"},
        "video": {"width": 320, "height": 180, "fps": 15, "bitrate_kbps": 800, "min_bitrate_kbps": 200},
        "network": {"listen_host": "127.0.0.1", "listen_port": media_port},
        "display": {"backend": "null"},
        "audio": {"enabled": False},
        "pairing": {"listen_host": "127.0.0.1", "port": 0},
        "hwcontrol": {"device": str(mcu), "control_socket": str(sock_dir / f"{d.name}-hwcontrol.sock")},
        "admin": {"listen_host": "127.0.0.1", "https_port": d.https_port, "http_port": 0},
    }  # fmt: skip


@pytest.fixture
def doorways(tmp_path: Path, sock_dir: Path) -> Iterator[tuple[Doorway, Doorway]]:
    """Two running doorways, "hall" (a) and "kitchen" (b): unclaimed, unpaired, each with a setup code."""
    a_port, b_port = free_tcp_ports(2)
    pair = (
        Doorway("hall", tmp_path / "hall.toml", tmp_path / "hall-state", a_port),
        Doorway("kitchen", tmp_path / "kitchen.toml", tmp_path / "kitchen-state", b_port),
    )
    try:
        for seed, (d, media_port) in enumerate(zip(pair, free_udp_ports(2), strict=True), start=1):
            mcu = tmp_path / f"{d.name}-mcu"
            d.config.write_text(to_toml(doorway_settings(d, media_port, sock_dir, mcu)))
            # As the installer does: a setup code from the command line before anyone opens the panel.
            d.setup_code = admin_setup_code(d.config)
            engine_args = ["engine", "--config", str(d.config)]
            engine = start_child(
                f"{d.name}-engine", d.config, sock_dir, engine_args, tmp_path / f"{d.name}-engine.log"
            )
            d.procs += [engine, *start_room_controller(d.name, tmp_path, d.config, mcu, seed)]
            d.procs.append(start_admin(d.name, tmp_path, d.config))
        for d in pair:
            try:
                wait_https(d.https_port, START_S, d.procs[-1])
            except RuntimeError as exc:
                pytest.fail(f"{exc}\n{d.tails()}")
        yield pair
    finally:
        stop_engines([p for d in pair for p in d.procs])


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the admin panel's browser test needs Debian's chromium package; "
            "`./do test` installs it (or: sudo apt-get install chromium)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A browser context (its own cookie jar: both panels are on 127.0.0.1, and cookies do not care about
    ports) with one page on one doorway's panel, and everything the browser did there: each request's URL,
    each response's status, console errors and uncaught exceptions."""

    def __init__(self, browser: Browser, doorway: Doorway) -> None:
        self.doorway = doorway
        self.context: BrowserContext = browser.new_context(
            ignore_https_errors=True, viewport=VIEWPORTS["desktop"]
        )
        self.context.set_default_timeout(WAIT_MS)
        self.requests: list[str] = []
        self.responses: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.document_status: int | None = None
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.on("response", self._response)
        self.context.on("console", self._console)
        self.context.on("weberror", lambda e: self.errors.append(f"uncaught: {e.error}"))
        self.page: Page = self.context.new_page()

    def _response(self, r: Response) -> None:
        self.responses.append((r.status, f"{r.request.method} {r.url}"))
        if r.request.is_navigation_request() and r.frame == self.page.main_frame:
            self.document_status = r.status

    def _console(self, m: ConsoleMessage) -> None:
        if m.type == "error":
            self.errors.append(f"console: {m.text} ({m.location.get('url')})")

    def goto(self, path: str) -> None:
        response = self.page.goto(self.doorway.url + path)
        assert response is not None and response.status == 200, (path, response and response.status)

    def shoot(self, name: str, status: int = 200) -> None:
        """Check the page (status, no errors so far) and save it at both widths: ``name-desktop.png`` and
        ``name-phone.png``. The page is left at desktop width."""
        assert self.document_status == status, (name, self.document_status)
        if status >= 400:
            # Chromium reports a page that came with an error status as a console error; that one was asked
            # for (a form refused), any other is not.
            said = f"console: Failed to load resource: the server responded with a status of {status} "
            self.errors = [
                e for e in self.errors if not (e.startswith(said) and e.endswith(f"({self.page.url})"))
            ]
        assert self.errors == [], (name, self.errors)
        page = self.page
        for label, size in VIEWPORTS.items():
            page.set_viewport_size(size)
            page.screenshot(path=SCREENSHOTS / f"{name}-{label}.png", full_page=True)
        page.set_viewport_size(VIEWPORTS["desktop"])

    def close(self) -> None:
        self.context.close()


def claim(tab: Tab, screenshot: str | None = None) -> None:
    """Open the fresh panel (it sends us to set-up), create the owner with the setup code, land on the
    overview logged in."""
    page = tab.page
    tab.goto("/")
    expect(page).to_have_url(f"{tab.doorway.url}/setup")
    expect(page.get_by_role("heading", name="Set up this doorway")).to_be_visible()
    if screenshot:
        tab.shoot(screenshot)
    page.get_by_label("Setup code").fill(tab.doorway.setup_code)
    page.get_by_label("User name").fill(USER)
    page.get_by_label("Password (at least 10 characters)").fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create the owner account").click()
    expect(page).to_have_url(f"{tab.doorway.url}/")
    expect(page.get_by_role("heading", name=tab.doorway.name, level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_be_attached()


def fingerprint(tab: Tab) -> str:
    """This doorway's fingerprint, as its pairing page shows it."""
    card = tab.page.locator("section.card", has=tab.page.get_by_role("heading", name="This doorway"))
    return card.locator("code.fingerprint").inner_text()


def twin_card(tab: Tab) -> Locator:
    return tab.page.locator("section.card", has=tab.page.get_by_role("heading", name="Its twin"))


@pytest.mark.slow
def test_claim_pair_and_configure_two_doorways_in_a_real_browser(
    browser: Browser, doorways: tuple[Doorway, Doorway]
) -> None:
    # The browser first: without chromium, nothing is started only to be stopped.
    hall, kitchen = doorways
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()  # The artifacts are this run's pages only.
    a, b = Tab(browser, hall), Tab(browser, kitchen)
    try:
        # 1. Claim both with their setup codes.
        claim(a, screenshot="setup")
        claim(b)

        # 2. The live overview: rendered by the server, then kept live by the event stream.
        page = a.page
        expect(page.locator("[data-live-text]")).to_have_text("Live: updated every second.")
        expect(page.locator('[data-key="call_state"]')).to_have_text("not paired")
        expect(page.locator('[data-key="video_mode"]')).to_have_text("320x180@15")

        # 3. Pair: hall shows a code, kitchen joins with it.
        a.goto("/pairing")
        expect(twin_card(a)).to_contain_text("Not paired")
        hall_fp = fingerprint(a)
        page.get_by_role("button", name="Show a pairing code").click()
        code = page.locator("p.code")
        expect(code).to_have_text(re.compile(r"^\d{4}-\d{4}$"))
        expect(page.locator("svg.qr")).to_be_visible()
        address = page.locator(".pairing-code code").first.inner_text()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address), address
        a.shoot("pairing-code")

        b.goto("/pairing")
        kitchen_fp = fingerprint(b)
        join = b.page.locator('form[action="/pairing/join"]')
        join.get_by_label("Code shown on the other doorway").fill(code.inner_text())
        join.get_by_label("Its address").fill(address)
        join.get_by_role("button", name="Pair").click()
        # The form's answer, and the attempt's outcome (where the media goes) below it.
        expect(b.page.locator(".message.notice:not([data-pairing-outcome])")).to_have_text(
            f"Paired with hall ({hall_fp})."
        )
        expect(b.page.locator('[data-pairing-outcome="paired"]')).to_contain_text(
            f"paired with hall ({hall_fp}) at {address}"
        )
        expect(twin_card(b)).to_contain_text("hall")
        expect(twin_card(b).locator("code.fingerprint")).to_have_text(hall_fp)
        b.shoot("pairing-joined")

        # pairing.js notices the attempt ended and reloads hall's page by itself.
        expect(page.locator('[data-pairing-outcome="paired"]')).to_contain_text("paired with kitchen")
        expect(twin_card(a).locator("code.fingerprint")).to_have_text(kitchen_fp)
        expect(page.locator("p.code")).to_have_count(0)
        a.shoot("pairing-paired")

        # Each engine follows its pairing store by itself: the call comes up, encrypted, on both panels.
        for tab, other in ((a, "kitchen"), (b, "hall")):
            tab.goto("/")
            expect(tab.page.locator("[data-live-text]")).to_have_text("Live: updated every second.")
            expect(tab.page.locator('[data-key="call_state"]')).to_have_text("connected")
            expect(tab.page.locator('[data-key="peer_name"]')).to_have_text(other)
            expect(tab.page.locator('[data-key="encrypted"]')).to_have_text("yes")
        a.shoot("overview")

        # 4. The phone menu: below 40rem the links fold behind "Menu".
        page.set_viewport_size(VIEWPORTS["phone"])
        menu = page.get_by_role("button", name="Menu")
        nav_link = page.locator("#site-nav").get_by_role("link", name="Settings")
        expect(menu).to_be_visible()
        expect(nav_link).to_be_hidden()
        menu.click()
        expect(nav_link).to_be_visible()
        expect(menu).to_have_attribute("aria-expanded", "true")
        page.screenshot(path=SCREENSHOTS / "menu-open-phone.png", full_page=True)
        menu.click()
        expect(nav_link).to_be_hidden()
        page.set_viewport_size(VIEWPORTS["desktop"])

        # 5. Settings: a new bitrate cap is saved and applied to the running engine; a bad value is refused
        # with the schema's own words, and the file is left as it was.
        a.goto("/settings")
        a.shoot("settings")
        field = page.get_by_label("Most video bitrate")
        expect(field).to_have_value("800")
        field.fill("600")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".message.notice")).to_have_text(
            "Saved video.bitrate_kbps. The engine now sends at most 600 kb/s (no restart)."
        )
        expect(page.get_by_label("Most video bitrate")).to_have_value("600")
        a.shoot("settings-saved")
        assert load_settings(hall.config).video.bitrate_kbps == 600
        saved = hall.config.read_bytes()

        page.get_by_label("Frames per second").fill("1000")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".message.error[role=alert]").first).to_have_text(
            "Not saved: the settings below are not valid."
        )
        expect(page.locator("ul.problems li")).to_have_text(
            f"{hall.config}: video.fps = 1000 is out of range (allowed: 1 to 240)"
        )
        expect(page.get_by_label("Frames per second")).to_have_value("1000")  # The form keeps the input.
        a.shoot("settings-refused", status=422)
        assert hall.config.read_bytes() == saved
        assert load_settings(hall.config).video.fps == 15

        # 6. Lighting and sensors, through hall's bridge and its room controller: readings arrive, and the
        # lights set here are what the bridge holds afterwards.
        a.goto("/lighting")
        expect(page.get_by_role("heading", name="Lighting and sensors", level=1)).to_be_visible()
        expect(page.locator(".state.up")).to_have_text("ready")
        room = page.locator("section.card", has=page.get_by_role("heading", name="Room"))
        expect(room.locator("dd").first).to_contain_text("lx")
        lights = page.locator("[data-light-form]")
        lights.locator('input[name="brightness"]').fill("420")
        lights.locator('input[name="cct_k"]').fill("4000")
        expect(lights.locator('output[data-for="brightness"]')).to_have_text("42.0 %")
        lights.get_by_role("button", name="Set the lights").click()
        expect(lights.locator("[data-light-result]")).to_have_text("Set.")
        a.shoot("lighting")
        a.goto("/lighting")
        expect(lights.locator('input[name="brightness"]')).to_have_value("420")
        expect(lights.locator('input[name="cct_k"]')).to_have_value("4000")

        # 7. Calibration, run from the panel on hall's engine: the camera (a snapshot with the framing drawn
        # over it) and the lighting (hall's room controller answering the lights). calibration.js follows
        # each run and reloads the page when it ends, which then shows the stored result.
        a.goto("/calibration")
        expect(page.get_by_role("heading", name="Calibration", level=1)).to_be_visible()
        for step in ("camera", "lighting"):
            card = page.locator(f"#step-{step}")
            expect(card).to_contain_text("Never run.")
            card.get_by_role("button", name=f"Run the {step} calibration").click()
            expect(card.locator(".verdict")).to_have_text("PASS")
            expect(page.get_by_role("status").first).to_contain_text(f"the {step} calibration passed")
        snapshot = page.locator("#step-camera img")
        expect(snapshot).to_be_visible()
        assert snapshot.evaluate("img => img.naturalWidth") > 0, "the snapshot did not load"
        expect(page.locator("#step-lighting")).to_contain_text("light added at full brightness")
        a.shoot("calibration")

        # 8. The other pages, each as it loads.
        for path, heading, name in (
            ("/logs", "Logs", "logs"),
            ("/diagnostics", "Diagnostics", "diagnostics"),
            ("/password", "Change the password", "password"),
        ):
            a.goto(path)
            expect(page.get_by_role("heading", name=heading, level=1, exact=True)).to_be_visible()
            a.shoot(name)
            if name == "diagnostics":
                # The bundle's link downloads a zip made from the running doorway.
                with page.expect_download() as download:
                    page.get_by_role("link", name="Download the diagnostics bundle").click()
                assert download.value.suggested_filename.endswith(".zip"), download.value.suggested_filename
                assert zipfile.is_zipfile(download.value.path())

        # 9. Log out, and in again.
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{hall.url}/login")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        a.shoot("login")
        page.get_by_label("User name").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{hall.url}/")
        expect(page.locator("[data-live-text]")).to_have_text("Live: updated every second.")

        # 10. Unpair on kitchen (the page asks first; the browser says yes).
        asked: list[str] = []

        def answer(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept()

        b.page.on("dialog", answer)
        b.goto("/pairing")
        b.page.get_by_role("button", name="Unpair").click()
        expect(b.page.locator(".message.notice")).to_have_text("Unpaired from hall.")
        assert asked == ["Forget hall? The two doorways stop talking until they are paired again."]
        expect(twin_card(b)).to_contain_text("Not paired")
        # And no longer the outcome of the attempt that paired them ("paired with hall") beside it.
        expect(b.page.locator("[data-pairing-outcome]")).to_have_count(0)
        b.shoot("pairing-unpaired")
        b.goto("/")  # The engine lets the twin go by itself too.
        expect(b.page.locator('[data-key="call_state"]')).to_have_text("not paired")

        # Nothing went wrong on any page, and the browser asked nothing of anyone but the doorway.
        for tab in (a, b):
            assert tab.errors == [], tab.errors
            bad = [(s, what) for s, what in tab.responses if s >= 400]
            assert bad == ([(422, f"POST {hall.url}/settings")] if tab is a else []), bad
            foreign = [url for url in tab.requests if not url.startswith(tab.doorway.url + "/")]
            assert foreign == [], foreign
    except BaseException:
        # The processes' own account of what happened, beside Playwright's.
        sys.stderr.write(hall.tails() + "\n" + kitchen.tails() + "\n")
        raise
    finally:
        a.close()
        b.close()
