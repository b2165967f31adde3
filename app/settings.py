"""The one settings schema for every Doorway process.

Loaded once at start from a TOML file (default ``/etc/doorway/doorway.toml``) with environment overrides
(``DOORWAY_<SECTION>__<KEY>``, for example ``DOORWAY_VIDEO__BITRATE_KBPS=8000``), validated strictly, and
passed down as plain values. Like Klipper, an option nobody reads is treated as a typo: unknown keys are
errors. Every number has bounds; every field's docstring gives its unit and default.

This module must stay light: the admin process imports it without importing av, numpy or sounddevice.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_PATH = Path("/etc/doorway/doorway.toml")
ENV_PREFIX = "DOORWAY_"


class SettingsError(Exception):
    """A settings file or override is wrong. The message is one line per problem, ready to print."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class EngineSettings(_Section):
    """The engine process as a whole."""

    name: str = Field("doorway", min_length=1, max_length=64)
    """Human-readable name of this doorway, shown to its twin. Default "doorway"."""
    control_socket: Path = Path("/run/doorway/engine.sock")
    """Unix socket of the engine's JSON control API (see app/CONTROL.md). Default /run/doorway/engine.sock."""
    state_dir: Path = Path("/var/lib/doorway")
    """Directory for durable state (keys, pairing, calibration). Default /var/lib/doorway."""
    role: Literal["duplex", "send", "receive"] = "duplex"
    """What this doorway does: "duplex" (send the camera and show the peer, the normal case), or only "send"
    or only "receive" (benchmarks and diagnostics). Default "duplex"."""
    stats_interval_s: float = Field(1.0, ge=0.1, le=60.0)
    """How often the engine refreshes its statistics snapshot, in seconds. Default 1.0."""


class CaptureSettings(_Section):
    """Where frames come from."""

    backend: Literal["synthetic", "v4l2", "file"] = "synthetic"
    """Capture backend: "synthetic" (computed scene), "v4l2" (USB camera) or "file" (looped video)."""
    device: str = "/dev/video0"
    """v4l2: the camera, as /dev/videoN or a /dev/v4l/by-id/... path. Default /dev/video0."""
    input_format: Literal["auto", "mjpeg", "yuyv422", "nv12"] = "auto"
    """v4l2: the pixel format asked of the camera. "auto" prefers MJPEG above 720p, raw below."""
    file: Path | None = None
    """file: the video file to loop. No default; required when backend is "file"."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """synthetic: seed of the scene's static texture. Default 0."""
    reopen_interval_s: float = Field(2.0, ge=0.1, le=60.0)
    """How often a lost camera is retried when no hot-plug event arrives, in seconds. Default 2.0."""


class CameraSettings(_Section):
    """The camera's framing and controls (see app/video/framing.py and app/video/controls.py).

    Framing: either the geometry (all five of ``screen_height_m``, ``screen_center_height_m``,
    ``camera_vfov_deg``, ``camera_height_m``, ``viewing_distance_m``), from which the zoom and vertical
    offset that show the room life-size at eye level are computed, or ``zoom`` and the offsets directly.
    Controls: unset (the default) leaves the camera's own value alone. The latest `doorway calibrate
    camera` result is what the engine applies at every start.
    """

    mirror: bool = False
    """Mirror the picture left-right before sending. Default false."""
    rotation: Literal[0, 90, 180, 270] = 0
    """Degrees the camera's picture is turned clockwise to be upright (90/270: camera on its side, 180:
    upside down). Default 0."""
    zoom: float = Field(1.0, ge=1.0, le=8.0)
    """Digital zoom, 1 to 8 (1 = the whole picture); ignored when the geometry is given. Default 1."""
    offset_x: float = Field(0.0, ge=-1.0, le=1.0)
    """Where the zoomed crop sits left to right: -1 left edge, 0 centred, 1 right edge. Default 0."""
    offset_y: float = Field(0.0, ge=-1.0, le=1.0)
    """Where the zoomed crop sits top to bottom: -1 top, 0 centred, 1 bottom; ignored when the geometry is
    given. Default 0."""
    screen_height_m: float | None = Field(None, ge=0.1, le=5.0)
    """Geometry: visible picture height of the twin's screen, metres. Default none."""
    screen_center_height_m: float | None = Field(None, ge=0.0, le=5.0)
    """Geometry: height of the twin's screen's centre above its floor, metres. Default none."""
    camera_vfov_deg: float | None = Field(None, ge=10.0, le=170.0)
    """Geometry: the camera's vertical field of view at the captured size, upright, degrees. Default none."""
    camera_height_m: float | None = Field(None, ge=0.0, le=5.0)
    """Geometry: height of the camera's lens above this room's floor (camera mounted level), metres.
    Default none."""
    viewing_distance_m: float | None = Field(None, ge=0.3, le=20.0)
    """Geometry: distance from the camera to where people stand, metres. Default none."""
    exposure_auto: bool | None = None
    """Auto exposure on (true) or manual (false); none leaves it. Default none."""
    exposure_absolute: int | None = Field(None, ge=1, le=100000)
    """Manual exposure time in units of 100 µs (with ``exposure_auto = false``). Default none."""
    gain: int | None = Field(None, ge=0, le=100000)
    """Sensor gain in the camera's steps. Default none."""
    white_balance_auto: bool | None = None
    """Automatic white balance on or off. Default none."""
    white_balance_temperature: int | None = Field(None, ge=1000, le=15000)
    """White balance in kelvin (with ``white_balance_auto = false``). Default none."""
    focus_auto: bool | None = None
    """Continuous autofocus on or off. Default none."""
    focus_absolute: int | None = Field(None, ge=0, le=100000)
    """Manual focus position in the camera's steps (with ``focus_auto = false``). Default none."""
    power_line_frequency: Literal["disabled", "50hz", "60hz", "auto"] | None = None
    """Anti-flicker for the mains frequency of the room's lights. Default none."""

    @model_validator(mode="after")
    def _geometry_all_or_none(self) -> CameraSettings:
        names = ("screen_height_m", "screen_center_height_m", "camera_vfov_deg", "camera_height_m",
                 "viewing_distance_m")  # fmt: skip
        given = [n for n in names if getattr(self, n) is not None]
        if given and len(given) != len(names):
            missing = ", ".join(n for n in names if n not in given)
            raise ValueError(f"the framing geometry needs all five of its keys; missing: {missing}")
        return self


class VideoSettings(_Section):
    """Picture size, rate and encoder."""

    width: int = Field(1920, ge=160, le=7680, multiple_of=2)
    """Frame width in pixels, even. Default 1920."""
    height: int = Field(1080, ge=120, le=4320, multiple_of=2)
    """Frame height in pixels, even. Default 1080."""
    fps: int = Field(60, ge=1, le=240)
    """Frames per second captured and sent. Default 60."""
    bitrate_kbps: int = Field(12000, ge=100, le=200000)
    """Most the encoder may use, in kilobits per second; congestion control moves the encoder's target
    between ``min_bitrate_kbps`` and this. Changeable at run time. Default 12000."""
    min_bitrate_kbps: int = Field(500, ge=100, le=200000)
    """Least the congestion controller will go down to, in kilobits per second. Default 500."""
    encoder: Literal["auto", "x264", "nvenc-h264", "nvenc-hevc", "v4l2m2m"] = "auto"
    """Encoder: "auto" tries NVENC, then v4l2m2m, then x264, and logs which was chosen and why."""
    x264_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = "ultrafast"
    """libx264 speed preset (always with tune=zerolatency). Default "ultrafast": on two cores it leaves room
    for the decoder and the other direction (1080p: ~3.5 ms a frame against ~7 ms for "superfast")."""
    keyframe_interval_s: float = Field(0.0, ge=0.0, le=3600.0)
    """Seconds between periodic keyframes; 0 means only on request (the receiver asks). Default 0."""
    intra_refresh: bool = False
    """Spread intra coding over frames (periodic intra refresh) instead of whole keyframes. Default off."""
    decoder_threads: int = Field(2, ge=1, le=16)
    """Slice threads for the H.264 decoder. Default 2."""


class NetworkSettings(_Section):
    """The UDP link to the twin."""

    listen_host: str = "0.0.0.0"
    """Address the media socket binds to. Default 0.0.0.0."""
    listen_port: int = Field(47000, ge=1, le=65535)
    """UDP port the media socket binds to. Default 47000."""
    peer_host: str | None = None
    """Address of the twin's media socket; none = the one learned when pairing (the normal case). Set it to
    pin the address (with ``peer_port``), or for ``encryption = "off"``. Default none."""
    peer_port: int = Field(47000, ge=1, le=65535)
    """UDP port of the twin's media socket, used with ``peer_host``. Default 47000."""
    encryption: Literal["required", "off"] = "required"
    """"required": every packet is sealed with keys from a handshake between the paired twins' keys, and the
    doorway talks to nobody until it is paired (see ``doorway pair``). "off": plaintext, to any
    ``peer_host`` — only for tests and measurements on a private link. Default "required"."""
    mtu_payload: int = Field(1200, ge=256, le=8900)
    """Largest media payload per datagram in bytes, excluding our header. Default 1200."""
    pacing_factor: float = Field(8.0, ge=1.0, le=100.0)
    """Pacing rate as a multiple of the encoder bitrate. Default 8.0."""
    pacing_burst_bytes: int = Field(16000, ge=1500, le=1_000_000)
    """Bytes that may leave back to back before pacing applies (token bucket depth). Default 16000."""
    feedback_interval_ms: int = Field(50, ge=10, le=1000)
    """How often the receiver reports packet arrivals to the sender (congestion control), ms. Default 50."""
    keepalive_interval_ms: int = Field(250, ge=10, le=10000)
    """Keepalive (and RTT probe) interval in milliseconds. Default 250."""
    report_interval_ms: int = Field(200, ge=10, le=10000)
    """Receiver report interval in milliseconds. Default 200."""
    keyframe_request_interval_ms: int = Field(100, ge=10, le=10000)
    """Most time between repeated keyframe requests while the picture is broken, and the least time
    between two keyframes the sender makes on request, in milliseconds. Default 100."""
    frame_deadline_ms: int = Field(80, ge=5, le=5000)
    """A frame not complete this long after its first fragment arrived is given up and a keyframe asked for,
    in ms. Retransmissions are only asked for when the round trip fits before it. Default 80."""
    socket_buffer_bytes: int = Field(4 * 1024 * 1024, ge=65536, le=256 * 1024 * 1024)
    """Requested SO_RCVBUF/SO_SNDBUF in bytes. Default 4 MiB."""


class DisplaySettings(_Section):
    """Where received frames go."""

    backend: Literal["null", "sdl"] = "null"
    """Display sink: "null" (records timing only) or "sdl" (full-screen SDL2). Default "null"."""
    sdl_driver: str = ""
    """SDL video driver, e.g. "kmsdrm" on the appliance, "x11" on a desktop; empty lets SDL choose."""
    fullscreen: bool = True
    """sdl: full screen (the appliance) or a window (the demo). Default true."""
    window_title: str = "Doorway"
    """sdl: window title when not full screen. Default "Doorway"."""


class AudioSettings(_Section):
    """48 kHz stereo audio in 10 ms blocks: devices, echo cancellation, codec, buffering."""

    enabled: bool = True
    """Send and play audio. Default true."""
    own_process: bool = True
    """Run the audio engine in a process of its own, joined to the engine by a local socket
    (app/engine/audio_process.py): its real-time threads then never wait for the interpreter lock behind a
    video thread. False runs it on threads of the engine process (tests that reach into it). Default true."""
    backend: Literal["synthetic", "portaudio"] = "synthetic"
    """Sound card: "synthetic" (a simulated room, for the demo and tests) or "portaudio" (real devices
    through sounddevice). Default "synthetic"."""
    input_device: str | None = None
    """portaudio: microphone, by (part of its) name; none = the system default. A missing device is an error
    that lists the devices found."""
    output_device: str | None = None
    """portaudio: speaker, by (part of its) name; none = the system default."""
    period_ms: float = 2.5
    """Sound card speaker period, ms: how often it takes audio (2.5, 5 or 10; the microphone always comes in
    10 ms blocks, the frame echo cancellation and Opus need). A frame waits for the speaker's next callback,
    and where the twin's frames fall just inside the concealment guard before one, a whole period more; a
    shorter period makes both smaller. Measured on a loaded 2-core host, 5 ms put the clean mouth-to-ear
    median over 20 ms in runs with an unlucky phase, 2.5 ms in none (README, "Audio"). Default 2.5."""
    device_latency_ms: float = Field(5.0, ge=0.0, le=200.0)
    """Output buffering asked of the sound card (portaudio) or simulated (synthetic), ms; reported apart
    from the pipeline's latency. Default 5."""
    codec: Literal["opus", "pcm"] = "opus"
    """"opus" (48 kHz stereo, restricted low delay) or "pcm" (16-bit, 1.5 Mb/s, for a LAN). Default "opus"."""
    bitrate_kbps: int = Field(128, ge=6, le=510)
    """Opus bitrate, kbit/s. Default 128."""
    redundancy: int = Field(2, ge=0, le=3)
    """Most earlier frames each packet repeats when the twin reports loss (none while it reports none).
    Default 2."""
    echo_cancellation: bool = True
    """WebRTC AEC3 on the microphone, fed the exact signal sent to the speaker. Default true."""
    noise_suppression: bool = False
    """WebRTC noise suppression. Default false: it adds 6 ms of latency, and a doorway is meant to carry the
    room's ambience."""
    gain_control: bool = False
    """WebRTC automatic gain control (AGC2). Default false: calibration sets the levels."""
    acoustic_delay_ms: float = Field(0.0, ge=0.0, le=500.0)
    """Speaker-to-microphone delay the echo canceller starts from, ms (set by calibration). Default 0."""
    playback_gain_db: float = Field(0.0, ge=-40.0, le=20.0)
    """Digital gain on everything sent to the speaker, dB (set by calibration: the far talker's echo at the
    microphone towards 10 dB under what was played, see app/calibration/audio.py). Samples beyond full scale
    are clipped. Default 0."""
    capture_gain_db: float = Field(0.0, ge=-40.0, le=40.0)
    """Digital gain on the microphone before echo cancellation, dB (set by calibration: a quiet microphone's
    noise floor raised towards −60 dBFS). Default 0."""
    jitter_min_ms: float = Field(0.0, ge=0.0, le=200.0)
    """Least jitter allowance the adaptive playout target may choose (on top of the jitter-free minimum of
    half a frame and half a period), ms. Default 0."""
    jitter_max_ms: float = Field(200.0, ge=10.0, le=500.0)
    """Most jitter allowance (and lip-sync hold) the playout target may choose, ms. Default 200."""
    lip_sync: bool = True
    """Delay audio or video so that they play together (within ±20 ms). Default true."""
    room_echo_delay_ms: float = Field(40.0, ge=0.0, le=500.0)
    """synthetic: speaker-to-microphone delay of the simulated room, ms. Default 40."""
    room_rt60_ms: float = Field(300.0, ge=0.0, le=3000.0)
    """synthetic: reverberation time of the simulated room (−60 dB), ms. Default 300."""
    room_echo_gain_db: float = Field(-10.0, ge=-80.0, le=10.0)
    """synthetic: direct-path echo level relative to the speaker, dB. Default −10."""
    room_noise_dbfs: float = Field(-60.0, ge=-120.0, le=0.0)
    """synthetic: microphone noise floor, dBFS. Default −60."""
    talker: str = "speech"
    """synthetic: the local talker: "speech" (generated), "silence", "markers", or a 48 kHz WAV file path."""
    talk_pattern: Literal["always", "never", "alternate"] = "always"
    """synthetic: when the local talker talks. Default "always"."""
    talk_s: float = Field(2.0, gt=0.0, le=600.0)
    """synthetic, "alternate": seconds of talk, then as many of silence. Default 2."""
    talk_phase_s: float = Field(0.0, ge=0.0, le=600.0)
    """synthetic, "alternate": seconds before the first talk. Default 0."""
    markers_every_s: float | None = Field(None, ge=0.01, le=60.0)
    """synthetic: latency markers mixed into the talker every this many seconds (benchmarks); none = off."""
    drift_ppm: float = Field(0.0, ge=-1000.0, le=1000.0)
    """synthetic: how fast this sound card's clock runs against the system clock, ppm. Default 0."""

    @field_validator("period_ms")
    @classmethod
    def _period(cls, v: float) -> float:
        if v not in (2.5, 5.0, 10.0):
            raise ValueError(f"must be 2.5, 5 or 10 (ms), not {v}")
        return float(v)


class PairingSettings(_Section):
    """Pairing with the twin (``doorway pair``): the TCP port the showing doorway listens on, and the code."""

    port: int = Field(47001, ge=0, le=65535)
    """TCP port ``doorway pair show`` listens on and ``doorway pair join`` connects to when no port is given;
    0 picks a free port (tests), which ``pair show`` prints. Default 47001."""
    listen_host: str = "0.0.0.0"
    """Address the pairing listener binds to. Default 0.0.0.0."""
    code_ttl_s: int = Field(600, ge=60, le=3600)
    """How long a shown pairing code stays valid, in seconds. Default 600 (10 minutes)."""
    advertise_host: str | None = Field(None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._:%-]+$")
    """Host name or address the twin should send media to, told to it when pairing; none = the address the
    twin sees this doorway at on the pairing connection. Default none."""


class HwcontrolSettings(_Section):
    """The bridge to the room's microcontroller (``doorway hwcontrol``): which serial device, its socket."""

    device: str | None = None
    """Serial device of the MCU: a path such as /dev/serial/by-id/usb-Doorway_...-if00 (a symlink is
    followed again at every reconnect); none = found by ``usb_vid``/``usb_pid``/``usb_serial``. Default
    none."""
    usb_vid: str = Field("2e8a", pattern=r"^[0-9a-f]{4}$")
    """USB vendor id to look for, 4 lower-case hex digits. Default "2e8a" (Raspberry Pi)."""
    usb_pid: str = Field("0005", pattern=r"^[0-9a-f]{4}$")
    """USB product id, 4 lower-case hex digits. Default "0005" (a Pico running MicroPython)."""
    usb_serial: str | None = Field(None, min_length=1, max_length=64)
    """USB serial number to insist on (several boards plugged in); none = any. Default none."""
    baud: int = Field(115200, ge=1200, le=4_000_000)
    """Line speed, bit/s (USB CDC ignores it; a UART does not). Default 115200."""
    control_socket: Path = Path("/run/doorway/hwcontrol.sock")
    """Unix socket of the bridge's JSON API (see hwcontrol/README.md). Default /run/doorway/hwcontrol.sock."""
    failsafe_ms: int = Field(3000, ge=500, le=60000)
    """Silence from the host after which the MCU fades to ``failsafe_scene``, ms. Default 3000."""
    failsafe_scene: int = Field(1, ge=0, le=3)
    """Scene the MCU fades to on failsafe: 0 off, 1 safe (warm, 30 %), 2 day, 3 evening. Default 1."""
    bootloader_key_file: Path | None = None
    """File holding the 32-byte key (64 hex digits) that authorises "enter bootloader"; none = the command
    is refused. Default none."""
    startup_scene: int = Field(3, ge=0, le=3)
    """Scene the lights take when the bridge first meets the MCU, until someone sets them. Default 3."""


class LightingSettings(_Section):
    """The room lights' targets, and "match the far side" (app/engine/lightmatch.py).

    Calibration measures how the room's light sensor answers the lights and stores the brightness and colour
    temperature to apply; the bridge applies them at every start. With ``match_far_side`` the engine instead
    drives the lights so this room's light level follows the twin's."""

    brightness_percent: float = Field(60.0, ge=0.0, le=100.0)
    """Brightness of the room lights, percent of full, on every channel; used when ``target_lux`` is none.
    Default 60."""
    target_lux: float | None = Field(None, gt=0.0, le=100_000.0)
    """Light level to reach at the room's light sensor, lux: calibration picks the brightness that gives it
    from the measured response (over the daylight it measured); none = use ``brightness_percent``. Default
    none."""
    cct_k: int = Field(3500, ge=1000, le=20000)
    """Colour temperature of the room lights, kelvin. Default 3500."""
    lights_cct_min_k: int = Field(2700, ge=1000, le=20000)
    """Warmest colour temperature the installed lights can make, kelvin (their data sheet). Default 2700."""
    lights_cct_max_k: int = Field(6500, ge=1000, le=20000)
    """Coolest colour temperature the installed lights can make, kelvin (their data sheet). Default 6500."""
    match_far_side: bool = False
    """Follow the twin's light level: the engine sets this room's lights so the local sensor reads what the
    far room's reads (within what the lights can do). Default false."""
    match_rate_percent_per_s: float = Field(2.0, ge=0.1, le=100.0)
    """Most that matching may change the brightness, percent of full per second (slow changes go unnoticed).
    Default 2.0."""
    match_smoothing_s: float = Field(5.0, ge=0.0, le=600.0)
    """Time constant of the smoothing of the far side's light level, seconds: passing clouds and people
    walking by the far sensor are not followed. 0 = none. Default 5.0."""
    match_tolerance_lux: float = Field(10.0, ge=0.0, le=10_000.0)
    """Matching leaves the lights alone while the two rooms differ by less than this, lux (sensor noise is
    not chased). Default 10.0."""

    @field_validator("lights_cct_max_k")
    @classmethod
    def _cct_range(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("lights_cct_min_k")
        if low is not None and v < low:
            raise ValueError(f"must be at least lights_cct_min_k ({low} K)")
        return v


class AdminSettings(_Section):
    """The LAN admin panel (``doorway admin``): where it listens, how long logins last, what it accepts."""

    listen_host: str = "0.0.0.0"
    """Address the admin panel's HTTPS and HTTP listeners bind to. Default 0.0.0.0."""
    https_port: int = Field(443, ge=1, le=65535)
    """TCP port of the admin panel, HTTPS with the doorway's own certificate. Default 443."""
    http_port: int = Field(80, ge=0, le=65535)
    """TCP port of the plain-HTTP listener, which only redirects to HTTPS; 0 turns it off. Default 80."""
    session_idle_minutes: int = Field(60, ge=1, le=10080)
    """A login unused for this long ends, in minutes. Default 60."""
    session_max_hours: int = Field(12, ge=1, le=720)
    """A login ends this long after it began however much it is used, in hours. Default 12."""
    login_max_failures: int = Field(5, ge=1, le=100)
    """Failed logins (per client address, and per user name) within ``lockout_minutes`` that lock logging
    in for ``lockout_minutes``. Default 5."""
    lockout_minutes: int = Field(15, ge=1, le=1440)
    """How long failures are remembered, and how long a lock-out lasts after the last one, in minutes.
    Default 15."""
    max_body_kb: int = Field(64, ge=1, le=16384)
    """Largest request body accepted, in KiB (1024 bytes); a larger one is refused with 413. Default 64."""
    history_days: int = Field(7, ge=1, le=366)
    """How much status history the admin panel keeps for its charts, in days. Default 7."""
    history_max_mb: int = Field(64, ge=1, le=4096)
    """Most disk space the status history may take, in MiB (1 MiB = 1048576 bytes); beyond it the oldest
    samples and events are deleted first, whatever ``history_days`` says. Default 64."""
    metrics_allow: tuple[str, ...] = ()
    """Networks, in CIDR notation ("192.168.1.0/24", "::1/128"), whose clients may read /metrics without
    logging in. Default empty: nobody."""

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError:
                try:
                    wide = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not a network in CIDR notation, like 192.168.1.0/24"
                    ) from None
                raise ValueError(f"{item!r} has host bits set; did you mean {wide}?") from None
        return v


class LoggingSettings(_Section):
    """Logging to stderr (journald adds time and unit)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level. "debug" turns on per-frame logging. Default "info"."""


class Settings(BaseSettings):
    """All of a doorway's settings. Build with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        validate_default=True,
    )

    engine: EngineSettings = EngineSettings()
    capture: CaptureSettings = CaptureSettings()
    camera: CameraSettings = CameraSettings()
    video: VideoSettings = VideoSettings()
    network: NetworkSettings = NetworkSettings()
    display: DisplaySettings = DisplaySettings()
    audio: AudioSettings = AudioSettings()
    pairing: PairingSettings = PairingSettings()
    hwcontrol: HwcontrolSettings = HwcontrolSettings()
    lighting: LightingSettings = LightingSettings()
    admin: AdminSettings = AdminSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file is passed as init values; the environment overrides it.
        return (env_settings, init_settings)


def _field_range(loc: tuple[Any, ...]) -> str | None:
    """The allowed range of the numeric field at ``loc`` (e.g. "1 to 240"), from the schema's bounds."""
    model: Any = Settings
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    if info is None:
        return None
    low = high = None
    for m in info.metadata:
        low = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else low
        low = getattr(m, "gt", None) if getattr(m, "gt", None) is not None else low
        high = getattr(m, "le", None) if getattr(m, "le", None) is not None else high
        high = getattr(m, "lt", None) if getattr(m, "lt", None) is not None else high
    if low is None and high is None:
        return None
    return f"{low if low is not None else '-inf'} to {high if high is not None else 'inf'}"


def _describe(err: dict[str, Any], source: str) -> str:
    """One line naming the source, the dotted key and what is allowed."""
    key = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        allowed = _field_range(tuple(err["loc"])) or f"{bounds[kind]} {next(iter(ctx.values()))}"
        return f"{source}: {key} = {value!r} is out of range (allowed: {allowed})"
    if kind == "literal_error":
        return f"{source}: {key} = {value!r} is not allowed (allowed: {ctx.get('expected')})"
    return f"{source}: {key} = {value!r}: {err['msg']}"


def parse_settings(text: str, source: str) -> Settings:
    """Validate settings file text (TOML) merged with the environment overrides, as :func:`load_settings`
    does after reading the file. ``source`` names the file in messages. Raises :class:`SettingsError`.

    The admin panel validates a would-be file with this before writing it, so a file it saves is one the
    services will start with."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        has_env = any(k.startswith(ENV_PREFIX) for k in os.environ)
        where = source + (" (with DOORWAY_* environment overrides)" if has_env else "")
        raise SettingsError("\n".join(_describe(dict(e), where) for e in exc.errors())) from None


def load_settings(path: Path | None = None) -> Settings:
    """Read, merge and validate settings.

    ``path`` None means the default file, which may be absent (all defaults apply); a path given explicitly
    must exist. Environment overrides come from ``os.environ``. Raises :class:`SettingsError` naming the file
    and every bad key.
    """
    explicit = path is not None
    path = path if path is not None else DEFAULT_CONFIG_PATH
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: cannot read: {exc}") from exc
    elif explicit:
        raise SettingsError(f"{path}: no such settings file")
    return parse_settings(text, str(path))
