"""PortAudioDevice against a fake ``sounddevice`` module, and once against the real PortAudio library.

This machine has no sound card, so :class:`FakeSounddevice` stands in for :mod:`sounddevice`: the same
functions, dictionary keys, ``Stream`` arguments and properties, ``CallbackFlags`` bits and
``PortAudioError``, over a small model of the hardware. Like PortAudio, it fixes its device list when it
initialises (``_initialize``), so a re-plugged card is seen only after ``_terminate``/``_initialize``, at a
new index. Tests drive the stream's callback from the test thread with :meth:`FakeStream.fire`; the only
waiting is for the supervisor thread, polled with a generous deadline.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from app.audio.device import AudioDevice, AudioDeviceError, list_devices, open_device
from app.audio.portaudio import PortAudioDevice

LOGGER = "app.audio.portaudio"

# -- the fake sounddevice ---------------------------------------------------------------------------------


class FakePortAudioError(Exception):
    """Like ``sounddevice.PortAudioError``: args are (text, PaErrorCode[, host error info])."""

    def __str__(self) -> str:
        text = str(self.args[0]) if self.args else ""
        if len(self.args) > 1:
            text = f"{text} [PaErrorCode {self.args[1]}]"
        return text


class FakeCallbackStop(Exception):
    pass


class FakeCallbackAbort(Exception):
    pass


class FakeCallbackFlags:
    """Like ``sounddevice.CallbackFlags``, with PortAudio's bit values."""

    __slots__ = ("_flags",)
    INPUT_UNDERFLOW = 0x1
    INPUT_OVERFLOW = 0x2
    OUTPUT_UNDERFLOW = 0x4
    OUTPUT_OVERFLOW = 0x8
    PRIMING_OUTPUT = 0x10

    def __init__(self, flags: int = 0) -> None:
        self._flags = flags

    def __bool__(self) -> bool:
        return bool(self._flags)

    @property
    def input_underflow(self) -> bool:
        return bool(self._flags & self.INPUT_UNDERFLOW)

    @property
    def input_overflow(self) -> bool:
        return bool(self._flags & self.INPUT_OVERFLOW)

    @property
    def output_underflow(self) -> bool:
        return bool(self._flags & self.OUTPUT_UNDERFLOW)

    @property
    def output_overflow(self) -> bool:
        return bool(self._flags & self.OUTPUT_OVERFLOW)

    @property
    def priming_output(self) -> bool:
        return bool(self._flags & self.PRIMING_OUTPUT)


class FakeTimeInfo:
    """Like the cffi ``PaStreamCallbackTimeInfo*`` sounddevice passes: stream times in seconds."""

    __slots__ = ("currentTime", "inputBufferAdcTime", "outputBufferDacTime")

    def __init__(self, adc: float, current: float, dac: float) -> None:
        self.inputBufferAdcTime = adc
        self.currentTime = current
        self.outputBufferDacTime = dac


class FakeDeviceList(tuple):  # type: ignore[type-arg]
    """Like ``sounddevice.DeviceList``: a tuple of device dictionaries."""

    __slots__ = ()


class _Pair:
    """Like sounddevice's ``_InputOutputPair``: ``[0]``/``["input"]``, falling back to PortAudio's default."""

    def __init__(self, fallback: Callable[[], tuple[int, int]]) -> None:
        self._pair: list[Any] = [None, None]
        self._fallback = fallback

    def __getitem__(self, index: int | str) -> Any:
        i = {"input": 0, "output": 1}.get(index, index) if isinstance(index, str) else index
        value = self._pair[i]
        return self._fallback()[i] if value is None else value


def _split(value: Any) -> tuple[Any, Any]:
    if isinstance(value, (str, bytes)):
        return value, value
    try:
        a, b = value
    except TypeError:
        return value, value
    return a, b


def card(name: str, inputs: int, outputs: int, hostapi: int = 0) -> dict[str, Any]:
    """A sound card as the hardware model holds it (no index: PortAudio assigns those)."""
    return {
        "name": name,
        "hostapi": hostapi,
        "max_input_channels": inputs,
        "max_output_channels": outputs,
        "default_low_input_latency": 0.0087 if inputs else -1.0,
        "default_low_output_latency": 0.0087 if outputs else -1.0,
        "default_high_input_latency": 0.0348 if inputs else -1.0,
        "default_high_output_latency": 0.0348 if outputs else -1.0,
        "default_samplerate": 48000.0,
    }


HDA = card("HDA Intel PCH: ALC3246 Analog (hw:0,0)", 2, 2)
USB = card("USB Audio Device: - (hw:1,0)", 1, 2)
SYSDEFAULT = card("sysdefault", 128, 128)
DEFAULT = card("default", 128, 128)


class FakeStream:
    """Like ``sounddevice.Stream`` (duplex, NumPy arrays); the test fires its callback."""

    def __init__(
        self,
        samplerate: float | None = None,
        blocksize: int | None = None,
        device: Any = None,
        channels: Any = None,
        dtype: Any = None,
        latency: Any = None,
        extra_settings: Any = None,
        callback: Callable[..., None] | None = None,
        finished_callback: Callable[[], None] | None = None,
        clip_off: bool | None = None,
        dither_off: bool | None = None,
        never_drop_input: bool | None = None,
        prime_output_buffers_using_stream_callback: bool | None = None,
    ) -> None:
        sd = FakeSounddevice.current
        assert sd is not None
        self._sd = sd
        sd.open_attempts += 1
        if sd.open_error is not None:
            raise sd.open_error
        idevice, odevice = _split(device)
        defaults = sd.default_indices()
        idevice = defaults[0] if idevice is None else idevice
        odevice = defaults[1] if odevice is None else odevice
        ichannels, ochannels = _split(channels)
        infos = []
        for kind, index, want in (("input", idevice, ichannels), ("output", odevice, ochannels)):
            info = sd.query_devices(index)
            count = info[f"max_{kind}_channels"] if want is None else want
            if count < 1 or count > info[f"max_{kind}_channels"]:
                raise FakePortAudioError("Error opening Stream: Invalid number of channels", -9998)
            if not sd.present(info["name"]):
                raise FakePortAudioError("Error opening Stream: Unanticipated host error", -9999)
            infos.append(info)
        assert samplerate is not None
        self.kwargs = {
            "samplerate": samplerate,
            "blocksize": blocksize,
            "device": (idevice, odevice),
            "channels": (ichannels, ochannels),
            "dtype": dtype,
            "latency": latency,
            "extra_settings": extra_settings,
        }
        self._samplerate = float(samplerate)
        self._blocksize = 0 if blocksize is None else blocksize
        self._device = (idevice, odevice)
        self._channels = (ichannels, ochannels)
        self._dtype = (dtype, dtype)
        self._latency = sd.granted_latency
        self.callback = callback
        self.finished_callback = finished_callback
        self.device_names = (infos[0]["name"], infos[1]["name"])
        self._active = False
        self._closed = False
        self.inactive_silently = False
        self.active_error: Exception | None = None
        self.callback_exceptions: list[BaseException] = []
        self.finished_calls = 0
        sd.streams.append(self)

    # Properties of the real Stream.
    @property
    def samplerate(self) -> float:
        return self._samplerate

    @property
    def blocksize(self) -> int:
        return self._blocksize

    @property
    def device(self) -> tuple[int, int]:
        return self._device

    @property
    def channels(self) -> tuple[int, int]:
        return self._channels

    @property
    def dtype(self) -> tuple[str, str]:
        return self._dtype

    @property
    def latency(self) -> tuple[float, float]:
        return self._latency

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active(self) -> bool:
        if self._closed:
            return False
        if self.active_error is not None:
            raise self.active_error
        return self._active and not self.inactive_silently

    @property
    def stopped(self) -> bool:
        return self._closed or not self._active

    def start(self) -> None:
        if self._closed:
            raise FakePortAudioError("Error starting stream: Invalid stream pointer", -9988)
        self._active = True

    def _finish(self) -> None:
        was_active = self._active
        self._active = False
        if was_active and self.finished_callback is not None:
            self.finished_calls += 1
            self.finished_callback()

    def stop(self, ignore_errors: bool = True) -> None:
        self._finish()

    def abort(self, ignore_errors: bool = True) -> None:
        self._finish()

    def close(self, ignore_errors: bool = True) -> None:
        if not self._closed:
            self._finish()
        self._closed = True

    # Test controls.
    def fail(self) -> None:
        """PortAudio's thread gave up on the device: the stream goes inactive and says it finished."""
        self._finish()

    def fire(
        self,
        indata: np.ndarray[Any, Any] | None = None,
        *,
        times: tuple[float, float, float] = (0.0, 0.0, 0.0),
        status: int = 0,
    ) -> np.ndarray[Any, Any]:
        """Run one callback as sounddevice would; returns the speaker block the callee filled."""
        assert self.active, "firing a stream that is not running"
        frames = self._blocksize
        ich, och = self._channels
        if indata is None:
            indata = np.zeros((frames, ich), dtype=np.float32)
        assert indata.shape == (frames, ich) and indata.dtype == np.float32
        outdata = np.full((frames, och), np.nan, dtype=np.float32)
        assert self.callback is not None
        try:
            self.callback(indata, outdata, frames, FakeTimeInfo(*times), FakeCallbackFlags(status))
        except (FakeCallbackStop, FakeCallbackAbort):
            self._finish()
        except Exception as exc:
            # cffi prints the traceback and returns paAbort: the stream stops.
            self.callback_exceptions.append(exc)
            self._finish()
        return outdata


class FakeSounddevice(types.ModuleType):
    """A stand-in for the :mod:`sounddevice` module over a hardware model the test changes."""

    current: FakeSounddevice | None = None

    PortAudioError = FakePortAudioError
    CallbackFlags = FakeCallbackFlags
    CallbackStop = FakeCallbackStop
    CallbackAbort = FakeCallbackAbort
    DeviceList = FakeDeviceList
    Stream = FakeStream

    def __init__(
        self, hardware: list[dict[str, Any]], default: tuple[str | None, str | None] = ("default", "default")
    ) -> None:
        super().__init__("sounddevice")
        self.__version__ = "0.5.6"
        self._lock = threading.Lock()
        self.hardware = [dict(c) for c in hardware]
        self.default_names = default
        self.granted_latency = (0.008, 0.012)
        self.open_error: Exception | None = None
        self.open_attempts = 0
        self.initialize_calls = 0
        self.terminate_calls = 0
        self.streams: list[FakeStream] = []
        self._initialized = 0
        self._devices: list[dict[str, Any]] = []
        self.default = types.SimpleNamespace(device=_Pair(self.default_indices))
        self._initialize()
        self.initialize_calls = 0

    # sounddevice's API.
    def query_devices(self, device: int | None = None, kind: str | None = None) -> Any:
        if kind not in ("input", "output", None):
            raise ValueError(f"Invalid kind: {kind!r}")
        self._check_initialized()
        if device is None and kind is None:
            return FakeDeviceList(dict(d) for d in self._devices)
        if device is None:
            device = self.default_indices()[0 if kind == "input" else 1]
        if not 0 <= device < len(self._devices):
            raise FakePortAudioError(f"Error querying device {device}")
        return dict(self._devices[device])

    def query_hostapis(self, index: int | None = None) -> Any:
        self._check_initialized()
        apis = []
        for i, name in enumerate(("ALSA", "OSS")):
            members = [d["index"] for d in self._devices if d["hostapi"] == i]
            apis.append(
                {
                    "name": name,
                    "devices": members,
                    "default_input_device": self.default_indices()[0] if i == 0 else -1,
                    "default_output_device": self.default_indices()[1] if i == 0 else -1,
                }
            )
        return tuple(apis) if index is None else apis[index]

    def _initialize(self) -> None:
        with self._lock:
            self._devices = [dict(c, index=i) for i, c in enumerate(self.hardware)]
        self._initialized += 1
        self.initialize_calls += 1

    def _terminate(self) -> None:
        if self._initialized == 0:
            raise FakePortAudioError("Error terminating PortAudio: PortAudio not initialized", -10000)
        self._initialized -= 1
        self.terminate_calls += 1
        for stream in self.streams:
            if not stream.closed:
                stream.close()

    # Helpers.
    def _check_initialized(self) -> None:
        if self._initialized == 0:
            raise FakePortAudioError("PortAudio not initialized", -10000)

    def default_indices(self) -> tuple[int, int]:
        names = [d["name"] for d in self._devices]
        return (
            names.index(self.default_names[0]) if self.default_names[0] in names else -1,
            names.index(self.default_names[1]) if self.default_names[1] in names else -1,
        )

    def present(self, name: str) -> bool:
        with self._lock:
            return any(c["name"] == name for c in self.hardware)

    def unplug(self, name: str) -> None:
        """The card leaves the hardware; streams on it fail (PortAudio's list keeps it until re-init)."""
        with self._lock:
            self.hardware = [c for c in self.hardware if c["name"] != name]
        for stream in list(self.streams):
            if not stream.closed and name in stream.device_names:
                stream.fail()

    def plug(self, info: dict[str, Any]) -> None:
        """The card comes back, enumerated first this time, so every index moves."""
        with self._lock:
            self.hardware.insert(0, dict(info))

    @property
    def stream(self) -> FakeStream:
        return self.streams[-1]


# -- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSounddevice]:
    sd = FakeSounddevice([HDA, USB, SYSDEFAULT, DEFAULT])
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    FakeSounddevice.current = sd
    yield sd
    FakeSounddevice.current = None


@pytest.fixture
def devices() -> Iterator[list[PortAudioDevice]]:
    """Devices made by :func:`make`; stopped at the end of the test so no supervisor outlives it."""
    made: list[PortAudioDevice] = []
    yield made
    for dev in made:
        dev.stop()
        assert dev._supervisor is None or not dev._supervisor.is_alive()


def make(devices: list[PortAudioDevice], inp: str | None, out: str | None, **kw: Any) -> PortAudioDevice:
    """A device with test-speed supervision: reopen and poll every 10 ms, no stall watchdog."""
    dev = PortAudioDevice(inp, out, **kw)
    dev._reopen_interval_s = 0.01
    dev._poll_s = 0.01
    dev._stall_s = None
    devices.append(dev)
    return dev


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for the supervisor thread to bring ``condition`` about (a generous deadline, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


class Recorder:
    """An AudioCallback that records its arguments and plays a constant."""

    def __init__(self, fill: float = 0.25) -> None:
        self.calls: list[tuple[np.ndarray[Any, Any], int, int, int]] = []
        self.mics: list[np.ndarray[Any, Any]] = []
        self.fill = fill

    def __call__(
        self, mic: np.ndarray[Any, Any], speaker: np.ndarray[Any, Any], index: int, cap: int, play: int
    ) -> None:
        self.mics.append(mic)
        self.calls.append((mic.copy(), index, cap, play))
        speaker.fill(self.fill)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


# -- choosing devices ------------------------------------------------------------------------------------


def test_default_devices_open_one_duplex_stream(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    dev = make(devices, None, None)
    assert isinstance(dev, AudioDevice)
    assert dev.name == "portaudio default / default"
    assert (dev.input_latency_ms, dev.output_latency_ms) == (10.0, 10.0)  # the latency asked, before start
    assert not dev.running
    dev.start(Recorder())
    assert dev.running
    assert fake.stream.kwargs == {
        "samplerate": 48000,
        "blocksize": 240,
        "device": (3, 3),
        "channels": (2, 2),
        "dtype": "float32",
        "latency": 0.01,
        "extra_settings": None,
    }
    assert fake.stream.active
    # The opened stream's own latencies, seconds -> ms.
    assert dev.input_latency_ms == pytest.approx(8.0)
    assert dev.output_latency_ms == pytest.approx(12.0)


def test_names_match_case_insensitive_substrings(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    dev = make(devices, "hda intel", "ALC3246", period=120, latency_ms=5.0)
    assert (
        dev.name
        == "portaudio HDA Intel PCH: ALC3246 Analog (hw:0,0) / HDA Intel PCH: ALC3246 Analog (hw:0,0)"
    )
    dev.start(Recorder())
    assert fake.stream.kwargs["device"] == (0, 0)
    assert fake.stream.kwargs["blocksize"] == 120
    assert fake.stream.kwargs["latency"] == 0.005


def test_an_exact_name_beats_longer_names_containing_it(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    # "default" is also part of "sysdefault"; the device called exactly that wins.
    dev = make(devices, "DEFAULT", "default")
    dev.start(Recorder())
    assert fake.stream.kwargs["device"] == (3, 3)


def test_an_ambiguous_name_lists_the_devices(fake: FakeSounddevice) -> None:
    with pytest.raises(AudioDeviceError) as err:
        PortAudioDevice("hw:", None)
    text = str(err.value)
    assert "input 'hw:' is ambiguous" in text
    assert "'HDA Intel PCH: ALC3246 Analog (hw:0,0)', 'USB Audio Device: - (hw:1,0)'" in text
    assert "[0] HDA Intel PCH: ALC3246 Analog (hw:0,0) — 2 in, 2 out, ALSA" in text


def test_a_missing_name_lists_every_device(fake: FakeSounddevice) -> None:
    with pytest.raises(AudioDeviceError) as err:
        PortAudioDevice(None, "Bluetooth")
    text = str(err.value)
    assert "no sound card for output 'Bluetooth'" in text
    for line in (
        "[0] HDA Intel PCH: ALC3246 Analog (hw:0,0) — 2 in, 2 out, ALSA",
        "[1] USB Audio Device: - (hw:1,0) — 1 in, 2 out, ALSA",
        "[2] sysdefault — 128 in, 128 out, ALSA",
        "[3] default — 128 in, 128 out, ALSA",
    ):
        assert line in text


def test_an_output_needs_two_channels(fake: FakeSounddevice) -> None:
    fake.hardware.append(card("Mic Only (hw:2,0)", 2, 0))
    fake._initialize()
    with pytest.raises(AudioDeviceError, match="none with at least 2 output channels"):
        PortAudioDevice(None, "mic only")


def test_no_sound_cards_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = FakeSounddevice([], default=(None, None))
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    with pytest.raises(AudioDeviceError, match="PortAudio found no sound cards"):
        PortAudioDevice(None, None)


def test_no_default_device_lists_the_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = FakeSounddevice([HDA], default=(None, None))
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    with pytest.raises(AudioDeviceError, match=r"no default input device(.|\n)*\[0\] HDA Intel"):
        PortAudioDevice(None, None)


def test_missing_libportaudio_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoLibrary(importlib.abc.Loader):
        def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
            return None

        def exec_module(self, module: types.ModuleType) -> None:
            raise OSError("PortAudio library not found")  # what sounddevice raises without libportaudio

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(
            self, name: str, path: Any, target: Any = None
        ) -> importlib.machinery.ModuleSpec | None:
            return importlib.util.spec_from_loader(name, NoLibrary()) if name == "sounddevice" else None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(AudioDeviceError, match="libportaudio2"):
        PortAudioDevice(None, None)


def test_open_device_makes_a_portaudio_device(fake: FakeSounddevice, devices: list[PortAudioDevice]) -> None:
    dev = open_device("portaudio", period=480, input_name="hda", output_name="hda", latency_ms=20.0)
    assert isinstance(dev, PortAudioDevice)
    devices.append(dev)
    dev.start(Recorder())
    assert fake.stream.kwargs["blocksize"] == 480
    assert fake.stream.kwargs["latency"] == 0.02


# -- the callback -----------------------------------------------------------------------------------------


def test_stereo_blocks_pass_through_with_counting_indices(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    rec = Recorder(fill=0.5)
    dev = make(devices, None, None)
    dev.start(rec)
    block = np.linspace(-1, 1, 480, dtype=np.float32).reshape(240, 2)
    for k in range(4):
        out = fake.stream.fire(block + k)
        assert np.all(out == 0.5)
    assert [c[1] for c in rec.calls] == [0, 1, 2, 3]
    # The microphone comes in 10 ms blocks: two 5 ms periods, with the callback that completes each.
    assert rec.calls[0][0].shape == rec.calls[2][0].shape == (0, 2)
    assert np.array_equal(rec.calls[1][0], np.concatenate([block, block + 1]))
    assert np.array_equal(rec.calls[3][0], np.concatenate([block + 2, block + 3]))
    assert dev.stats()["callbacks"] == 4
    assert fake.stream.callback_exceptions == []


def test_a_mono_microphone_is_copied_to_both_channels(
    fake: FakeSounddevice, devices: list[PortAudioDevice], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rec = Recorder()
    dev = make(devices, "usb audio", "usb audio")
    dev.start(rec)
    assert fake.stream.kwargs["channels"] == (1, 2)
    assert any("one channel" in r.getMessage() for r in records(caplog, logging.INFO))
    monos = [np.arange(240, dtype=np.float32).reshape(240, 1) / 240 + k for k in range(4)]
    for mono in monos:
        fake.stream.fire(mono)
    for k in (1, 3):
        both = np.concatenate([monos[k - 1], monos[k]])[:, 0]
        assert rec.calls[k][0].shape == (480, 2)
        assert np.array_equal(rec.calls[k][0][:, 0], both)
        assert np.array_equal(rec.calls[k][0][:, 1], both)
    assert rec.mics[1] is rec.mics[3]  # one preallocated buffer, not a new array per callback


def test_stream_times_become_monotonic_ns_with_the_smallest_offset(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    rec = Recorder()
    dev = make(devices, None, None)
    clock = [0]
    dev._clock = lambda: clock[0]
    dev.start(rec)
    # Binary-exact seconds so the expected ns are exact: the stream clock reads 1000 s when the monotonic
    # clock reads 5000 s + 123 ns, so the offset is 4000 s + 123 ns.
    base = 5_000_000_000_123
    offset = base - 1_000_000_000_000
    step = 0.00390625  # 1/256 s between callbacks

    def fire(k: int, late_ns: int) -> tuple[int, int]:
        current = 1000.0 + k * step
        clock[0] = base + round(k * step * 1e9) + late_ns
        fake.stream.fire(times=(current - 0.0078125, current, current + 0.0078125))
        return rec.calls[-1][2], rec.calls[-1][3]

    def expected(k: int, offset_ns: int) -> tuple[int, int]:
        current_ns = 1_000_000_000_000 + round(k * step * 1e9)
        return current_ns - 7_812_500 + offset_ns, current_ns + 7_812_500 + offset_ns

    assert fire(0, 0) == expected(0, offset)
    # Called 3 ms late: the earlier, smaller offset still holds (the capture time is still that of the 10 ms
    # block begun with callback 0).
    assert fire(1, 3_000_000) == (expected(0, offset)[0], expected(1, offset)[1])
    # Called 1 ms earlier than the first time: a smaller offset is adopted at once.
    assert fire(2, -1_000_000) == expected(2, offset - 1_000_000)


def test_the_offset_estimate_forgets_within_two_seconds(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    rec = Recorder()
    dev = make(devices, None, None)  # 240 samples: 200 callbacks per second
    clock = [0]
    dev._clock = lambda: clock[0]
    dev.start(rec)

    def fire(late_ns: int) -> int:
        clock[0] = 10_000_000_000 + late_ns
        fake.stream.fire(times=(99.0, 100.0, 101.0))
        return rec.calls[-1][3] - 101_000_000_000  # the offset applied: playout_ns - DAC time

    assert fire(0) == -90_000_000_000  # monotonic 10 s at stream time 100 s
    for n in range(2, 201):
        assert fire(1_000_000) == -90_000_000_000, n  # the first second's minimum still holds
    for _ in range(199):
        fire(1_000_000)
    # Two whole one-second buckets without the early sample: the estimate has moved on.
    assert fire(1_000_000) == -89_999_000_000


def test_zero_stream_times_fall_back_on_the_reported_latencies(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    rec = Recorder()
    dev = make(devices, None, None)
    dev._clock = lambda: 7_000_000_000
    dev.start(rec)
    fake.stream.fire(times=(0.0, 0.0, 0.0))
    _, _, capture_ns, playout_ns = rec.calls[0]
    # now - period (5 ms) - input latency (8 ms); now + output latency (12 ms)
    assert capture_ns == 7_000_000_000 - 5_000_000 - 8_000_000
    assert playout_ns == 7_000_000_000 + 12_000_000
    # Only the converter times missing: the same estimate, around the converted callback time.
    fake.stream.fire(times=(0.0, 100.0, 0.0))
    _, _, capture_ns, playout_ns = rec.calls[1]
    assert capture_ns == 7_000_000_000 - 5_000_000 - 8_000_000
    assert playout_ns == 7_000_000_000 + 12_000_000


def test_xruns_are_counted(fake: FakeSounddevice, devices: list[PortAudioDevice]) -> None:
    dev = make(devices, None, None)
    dev.start(Recorder())
    fake.stream.fire(status=FakeCallbackFlags.INPUT_OVERFLOW)
    fake.stream.fire(status=FakeCallbackFlags.OUTPUT_UNDERFLOW)
    fake.stream.fire(status=FakeCallbackFlags.INPUT_OVERFLOW | FakeCallbackFlags.OUTPUT_UNDERFLOW)
    fake.stream.fire(status=FakeCallbackFlags.PRIMING_OUTPUT)
    fake.stream.fire()
    stats = dev.stats()
    assert (stats["input_overflows"], stats["output_underflows"], stats["callbacks"]) == (2, 2, 5)


def test_a_raising_callback_plays_silence_and_keeps_running(
    fake: FakeSounddevice, devices: list[PortAudioDevice], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def callback(mic: Any, speaker: Any, index: int, cap: int, play: int) -> None:
        seen.append(index)
        speaker.fill(0.9)
        if index == 0:
            raise ValueError("boom")

    dev = make(devices, None, None)
    dev.start(callback)
    out = fake.stream.fire()
    assert np.all(out == 0.0)
    assert np.all(fake.stream.fire() == np.float32(0.9))
    assert seen == [0, 1]
    assert dev.stats()["callback_errors"] == 1
    assert fake.stream.callback_exceptions == []  # nothing reached PortAudio: the stream runs on
    assert fake.stream.active
    assert any("audio callback failed" in r.getMessage() for r in caplog.records)


# -- life cycle -------------------------------------------------------------------------------------------


def test_start_twice_raises_and_stop_is_idempotent(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    dev = make(devices, None, None)
    dev.stop()  # before start: nothing to do
    dev.start(Recorder())
    with pytest.raises(RuntimeError, match="already running"):
        dev.start(Recorder())
    first = fake.stream
    dev.stop()
    dev.stop()
    assert not dev.running
    assert first.closed
    assert dev._supervisor is None
    # And it starts again, counting from 0.
    rec = Recorder()
    dev.start(rec)
    assert fake.stream is not first
    fake.stream.fire()
    assert rec.calls[0][1] == 0


def test_a_stream_that_will_not_open_raises_audio_device_error(
    fake: FakeSounddevice, devices: list[PortAudioDevice]
) -> None:
    dev = make(devices, "hda", "hda")
    fake.open_error = FakePortAudioError("Error opening Stream: Device unavailable", -9985)
    with pytest.raises(AudioDeviceError, match=r"cannot open the sound card.*Device unavailable"):
        dev.start(Recorder())
    assert not dev.running
    assert dev._supervisor is None


def test_a_card_unplugged_before_start_raises(fake: FakeSounddevice, devices: list[PortAudioDevice]) -> None:
    dev = make(devices, "usb", "usb")
    fake.unplug(USB["name"])
    with pytest.raises(AudioDeviceError, match="Unanticipated host error"):
        dev.start(Recorder())
    assert not dev.running


def test_stop_from_inside_the_callback(fake: FakeSounddevice, devices: list[PortAudioDevice]) -> None:
    dev = make(devices, None, None)

    def callback(mic: Any, speaker: Any, index: int, cap: int, play: int) -> None:
        speaker.fill(0.0)
        dev.stop()

    dev.start(callback)
    stream = fake.stream
    stream.fire()
    assert not dev.running
    wait_until(lambda: stream.closed)  # closed by the supervisor once the callback returned
    dev.start(Recorder())  # waits for that supervisor, then opens afresh
    assert dev.running and fake.stream is not stream


# -- losing the card and getting it back ------------------------------------------------------------------


def test_an_unplugged_card_is_lost_then_reopened_at_its_new_index(
    fake: FakeSounddevice, devices: list[PortAudioDevice], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rec = Recorder()
    dev = make(devices, "usb", "usb")
    dev.start(rec)
    first = fake.stream
    assert first.kwargs["device"] == (1, 1)
    first.fire()
    first.fire()

    fake.unplug(USB["name"])
    wait_until(lambda: dev.lost)
    assert dev.running
    assert dev.stats()["lost"] is True
    # Several reopen attempts fail while the card is away; still exactly one warning.
    wait_until(lambda: fake.initialize_calls >= 3)
    assert dev.lost
    assert first.closed

    fake.plug(USB)
    wait_until(lambda: not dev.lost)
    assert dev.stats()["reopened"] == 1
    second = fake.stream
    assert second is not first and second.active
    assert second.kwargs["device"] == (0, 0)  # found again by name at its new index
    second.fire()
    assert [c[1] for c in rec.calls] == [0, 1, 2]  # index counts on across the reopen

    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "portaudio USB Audio Device: - (hw:1,0) / USB Audio Device: - (hw:1,0)" in warnings[0].getMessage()
    assert "lost" in warnings[0].getMessage()
    assert any("back after" in r.getMessage() for r in records(caplog, logging.INFO))

    dev.stop()
    assert second.closed and not dev.running


@pytest.mark.parametrize("how", ["finished", "inactive", "error"])
def test_each_kind_of_stream_failure_is_noticed_and_recovered(
    fake: FakeSounddevice, devices: list[PortAudioDevice], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    dev = make(devices, None, None)
    dev.start(Recorder())
    first = fake.stream
    if how == "finished":
        first.fail()  # PortAudio's finished-callback fires
    elif how == "inactive":
        first.inactive_silently = True  # no callback, the stream just reports inactive
    else:
        first.active_error = FakePortAudioError("Error checking stream: Unanticipated host error", -9999)
    wait_until(lambda: dev.stats()["reopened"] == 1)
    assert not dev.lost
    assert first.closed
    assert fake.stream is not first and fake.stream.active
    assert len(records(caplog, logging.WARNING)) == 1


def test_a_stream_that_stops_calling_back_is_lost(
    fake: FakeSounddevice, devices: list[PortAudioDevice], caplog: pytest.LogCaptureFixture
) -> None:
    dev = make(devices, None, None)
    dev._stall_s = 0.05
    dev._reopen_interval_s = 60.0  # stay lost for the asserts; stop() does not wait for this
    dev.start(Recorder())
    wait_until(lambda: dev.lost)
    (warning,) = records(caplog, logging.WARNING)
    assert "no audio callback" in warning.getMessage()
    dev.stop()
    assert not dev.running


def test_stop_while_lost(fake: FakeSounddevice, devices: list[PortAudioDevice]) -> None:
    dev = make(devices, "usb", "usb")
    dev.start(Recorder())
    fake.unplug(USB["name"])
    wait_until(lambda: dev.lost)
    dev.stop()
    dev.stop()
    assert not dev.running
    assert all(s.closed for s in fake.streams)


# -- the real PortAudio library ---------------------------------------------------------------------------


def test_the_real_portaudio_library() -> None:
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        pytest.skip(f"libportaudio cannot be loaded: {exc}")
    found = list_devices()
    if not found:
        # The build machines have no sound card.
        with pytest.raises(AudioDeviceError, match="PortAudio found no sound cards"):
            PortAudioDevice(None, None)
    else:
        # A developer's machine: a name that matches nothing lists what is there.
        with pytest.raises(AudioDeviceError) as err:
            PortAudioDevice("no such card 7f3a", None)
        assert str(found[0]["name"]) in str(err.value)
