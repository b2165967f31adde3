"""Camera calibration: the camera's controls, the framing that shows this room life-size at eye level, and
a snapshot with the framing drawn on it.

Steps (``calibrate``), each reported through ``progress``:

1. List the camera's controls (:mod:`app.video.controls`); known ones it lacks are listed as absent. A
   camera with none (a file, some capture cards) gets the message "the camera X has no adjustable controls;
   framing only" — information, not a failure. A camera that is missing or not a V4L2 camera is a problem
   naming it, and the step goes on with what it can do.
2. Set the control values ``[camera]`` asks for, an "auto" switch before the absolute value it unlocks;
   each refusal (absent, out of range with the range, read-only) is a problem.
3. Compute the framing (:func:`app.video.framing.framing_from_settings`) and check it: the crop inside the
   picture, the zoom no more than :data:`MAX_UPSCALE` times the camera's pixels, and — with the geometry —
   life-size and eye level reachable.
4. Take a snapshot: from the running engine over its control socket when it answers (after handing it the
   new framing with ``set_framing``, so the call shows it at once), else by opening the capture source the
   settings name for a few pictures. It is written atomically to ``<state_dir>/calibration/camera.jpg``.
5. Check the exposure: the mean luma of the picture within :data:`LUMA_RANGE`.

``Report.apply`` carries ``framing`` (the :class:`~app.video.framing.Framing` as JSON) and ``controls``
(name → value read back); the engine applies both at every start
(:func:`app.video.framing.framed_capture`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from app.calibration.report import Check, Progress, Report

if TYPE_CHECKING:
    from app.settings import Settings
    from app.video.framing import Snapshot

log = logging.getLogger(__name__)

LUMA_RANGE: Final = (60.0, 180.0)
"""Mean luma (0..255) of a well exposed room picture: darker is underexposed, brighter washed out."""
MAX_UPSCALE: Final = 2.0
"""Most a camera pixel may be enlarged by digital zoom before the picture visibly softens."""
WARMUP_FRAMES: Final = 10
"""Pictures read and thrown away after opening a real camera, while its auto exposure settles."""
SNAPSHOT_NAME: Final = "camera.jpg"


def snapshot_path(state_dir: Path) -> Path:
    """Where the latest camera snapshot is kept."""
    return state_dir / "calibration" / SNAPSHOT_NAME


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)  # mkstemp makes it 0600; the admin panel (group doorway) shows it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _from_engine(settings: Settings, framing_json: dict[str, Any]) -> tuple[bytes, float, str] | None:
    """Ask the running engine to use the framing and send a snapshot: (JPEG, mean luma, what) or None."""
    from app.control import ControlClientError, request

    sock = settings.engine.control_socket
    if not sock.exists():
        return None
    try:
        framed = request(sock, "set_framing", timeout=5.0, **framing_json)
        if not framed.get("ok"):
            log.info("calibration: the engine refused the framing: %s", framed.get("error"))
            return None
        reply = request(sock, "snapshot", timeout=10.0, width=640)
    except ControlClientError as exc:
        log.info("calibration: no engine to take the snapshot (%s); opening the camera", exc)
        return None
    if not reply.get("ok"):
        log.info("calibration: the engine took no snapshot: %s", reply.get("error"))
        return None
    try:
        jpeg = base64.b64decode(str(reply["jpeg_base64"]), validate=True)
        luma = float(reply["mean_luma"])
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        log.warning("calibration: the engine's snapshot reply is malformed: %s", exc)
        return None
    return jpeg, luma, f"the running engine ({sock})"


def _from_capture(settings: Settings, framing: Any) -> Snapshot:
    """Open the configured capture source for a few pictures; the last one. CaptureError when it cannot."""
    import numpy as np

    from app.video.capture import create_capture
    from app.video.framing import Snapshot

    source = create_capture(settings.capture, settings.video)
    source.open()
    try:
        frames = 1 if settings.capture.backend == "synthetic" else WARMUP_FRAMES
        for _ in range(frames):
            cf = source.read()
    finally:
        source.close()
    frame = cf.frame
    return Snapshot(
        np.asarray(frame.to_ndarray(format="yuv420p"), dtype=np.uint8),
        frame.width,
        frame.height,
        framing,
        cf.captured_ns,
    )


def calibrate(settings: Settings, progress: Progress) -> Report:
    """Run the camera step (see the module docstring). Never raises for what it finds."""
    from app.video.capture.base import CaptureError
    from app.video.controls import ControlsError, open_controls
    from app.video.framing import apply_controls, desired_controls, framing_from_settings, snapshot_jpeg

    checks: list[Check] = []
    problems: list[str] = []
    details: dict[str, Any] = {}
    apply: dict[str, Any] = {}
    cap, video = settings.capture, settings.video
    device = {"v4l2": cap.device, "file": str(cap.file)}.get(cap.backend, cap.backend)
    details["camera"] = device

    # 1 and 2: controls.
    progress(0.05, f"reading the controls of the camera {device}")
    wanted = desired_controls(settings.camera)
    try:
        controls = open_controls(cap)
    except ControlsError as exc:
        problems.append(f"camera controls: {exc}")
        controls = None
    if controls is not None:
        try:
            listing = controls.controls()
            present = [c for c in listing if c.present]
            details["controls"] = [c.to_json() for c in listing]
            if not present:
                checks.append(Check("controls", f"the camera {controls.device} has no adjustable controls; "
                                    "framing only"))  # fmt: skip
            else:
                absent = [c.name for c in listing if not c.present]
                checks.append(Check("controls", len(present), "present"))
                if absent:
                    checks.append(Check("controls absent", ", ".join(absent)))
                optical = {c.name: c for c in present}.get("zoom_absolute")
                if optical is not None:
                    # Information for the installer: the camera's own zoom frames for free, where digital
                    # zoom costs ~0.5 ms a picture and softens it; its units are the vendor's.
                    checks.append(Check("camera's own zoom", f"zoom_absolute {optical.range_text()}"))
            if wanted:
                progress(0.2, "setting " + ", ".join(f"{k} = {v}" for k, v in wanted.items()))
                done, refused = apply_controls(controls, wanted)
                problems += [f"camera control: {p}" for p in refused]
                if done:
                    apply["controls"] = done
                checks.append(Check("controls set", f"{len(done)} of {len(wanted)}", "",
                                    f"{len(wanted)} of {len(wanted)}", len(done) == len(wanted)))  # fmt: skip
        except ControlsError as exc:
            problems.append(f"camera controls: {exc}")
        finally:
            controls.close()

    # 3: framing.
    progress(0.4, "computing the framing")
    framing, geometry = framing_from_settings(settings.camera)
    crop = framing.crop(video.width, video.height, video.width, video.height)
    details["framing"] = framing.to_json()
    details["crop"] = {"x": crop.x, "y": crop.y, "width": crop.width, "height": crop.height}
    inside = crop.x >= 0 and crop.y >= 0 and crop.x + crop.width <= video.width
    inside = inside and crop.y + crop.height <= video.height
    checks.append(Check("crop inside the picture", f"{crop.width}x{crop.height} at ({crop.x}, {crop.y})",
                        "", "inside", inside))  # fmt: skip
    upright_h = video.height if framing.rotation in (0, 180) else video.width
    upright_crop_h = crop.height if framing.rotation in (0, 180) else crop.width
    upscale = video.height / upright_crop_h if upright_h else 1.0
    checks.append(Check("digital zoom", upscale, "x", f"≤ {MAX_UPSCALE:g}x", upscale <= MAX_UPSCALE + 1e-9))
    if upscale > MAX_UPSCALE + 1e-9:
        problems.append(
            f"the framing enlarges each camera pixel {upscale:.1f} times (most {MAX_UPSCALE:g}): use the "
            "camera's own zoom, a narrower lens, or stand closer"
        )
    if geometry is not None:
        details["geometry"] = {
            "picture_height_m": round(geometry.picture_height_m, 3),
            "wanted_zoom": round(geometry.wanted_zoom, 3),
            "wanted_offset_y": round(geometry.wanted_offset_y, 3),
        }
        life_size = geometry.wanted_zoom >= 1.0 - 1e-9
        checks.append(Check("life-size zoom", geometry.wanted_zoom, "x", "≥ 1x", life_size))
        if not life_size:
            problems.append(
                f"at {settings.camera.viewing_distance_m} m the camera sees "
                f"{geometry.picture_height_m:.2f} m of height, less than the screen's "
                f"{settings.camera.screen_height_m} m: people will look smaller than life; use a wider lens "
                "or place the camera further back"
            )
        eye_level = abs(geometry.wanted_offset_y) <= 1.0 + 1e-9
        checks.append(Check("eye-level offset", geometry.wanted_offset_y, "", "-1 to 1", eye_level))
        if not eye_level:
            way = "lower" if geometry.wanted_offset_y > 0 else "higher"
            problems.append(
                "eye level is outside the camera's picture at this zoom: mount the camera "
                f"{way}, nearer the screen's centre height ({settings.camera.screen_center_height_m} m)"
            )
    apply["framing"] = framing.to_json()

    # 4: snapshot.
    progress(0.6, "taking a snapshot")
    got = _from_engine(settings, framing.to_json())
    if got is None:
        try:
            snap = _from_capture(settings, framing)
        except (CaptureError, ValueError) as exc:
            problems.append(f"no snapshot: {exc}")
            got = None
        else:
            got = (snapshot_jpeg(snap), snap.mean_luma, f"the capture source ({device})")
    if got is not None:
        jpeg, luma, source = got
        path = snapshot_path(settings.engine.state_dir)
        try:
            write_atomically(path, jpeg)
        except OSError as exc:
            problems.append(f"the snapshot could not be saved to {path}: {exc}")
        else:
            details["snapshot"] = str(path)
            details["snapshot_from"] = source
        # 5: exposure.
        progress(0.9, "checking the exposure")
        lo, hi = LUMA_RANGE
        ok = lo <= luma <= hi
        checks.append(Check("exposure (mean luma)", luma, "", f"{lo:g} to {hi:g}", ok))
        if not ok:
            what = "dark" if luma < lo else "bright"
            problems.append(
                f"the picture is too {what} (mean luma {luma:.0f}, want {lo:g} to {hi:g}): adjust the room's "
                "light or camera.exposure_auto / exposure_absolute / gain"
            )
    progress(1.0, "done")
    return Report("camera", checks=tuple(checks), apply=apply, problems=tuple(problems), details=details)
