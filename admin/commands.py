"""The ``doorway admin serve|fingerprint|setup-code`` commands, behind app/cli.py.

Each takes the loaded settings and the output streams and returns the exit status: 0 done, 1 refused or
failed (the message says why). Results go to ``out``, problems to ``err``; nothing else here prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from admin import tls
from admin.security import Passwords, format_setup_code, issue_setup_code
from admin.store import AdminStore, AdminStoreError, SetupClosedError
from app.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1


def _url(settings: Settings, path: str) -> str:
    port = settings.admin.https_port
    return f"https://doorway.local{'' if port == 443 else f':{port}'}{path}"


def serve(settings: Settings, config_path: Path) -> int:
    """Run the admin panel until SIGTERM (the service); its settings page edits ``config_path``."""
    from admin.server import serve as run_server

    return run_server(settings, config_path)


def fingerprint(settings: Settings, out: TextIO, err: TextIO) -> int:
    """Print the SHA-256 fingerprint of the admin panel's certificate, making the certificate if needed."""
    try:
        files = tls.ensure_certificate(settings.engine.state_dir)
        out.write(f"{tls.fingerprint(files.cert)}\n")
    except tls.TlsError as exc:
        err.write(f"doorway: {exc}\n")
        return EXIT_FAILED
    return EXIT_OK


def setup_code(settings: Settings, out: TextIO, err: TextIO) -> int:
    """Make a new one-time setup code and print it (replacing any earlier one); only before set-up."""
    try:
        with AdminStore(settings.engine.state_dir) as store:
            code = issue_setup_code(store, Passwords(), time.time())
    except SetupClosedError:
        err.write(
            "doorway: this doorway's owner account exists, so set-up is closed and no setup code is needed.\n"
            f"Log in at {_url(settings, '/login')}; change the password there under Password.\n"
        )
        return EXIT_FAILED
    except AdminStoreError as exc:
        err.write(f"doorway: {exc}\n")
        return EXIT_FAILED
    out.write(
        f"Setup code: {format_setup_code(code)}\n"
        f"Open {_url(settings, '/setup')} (or this doorway's address) and enter it to create the owner "
        "account.\nIt works once, for 24 hours, and is not shown again; running this again makes a new one "
        "and the old one stops working.\n"
    )
    return EXIT_OK
