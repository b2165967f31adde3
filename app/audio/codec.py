"""Audio codecs for 48 kHz stereo in 10 ms frames: Opus through libopus itself, and raw PCM for a LAN.

Every codec takes and returns one 10 ms frame at a time, ``FRAME_SAMPLES`` (480) samples per channel at
``SAMPLE_RATE`` (48 kHz), as a float32 array of shape ``(480, 2)`` with values in [-1, 1], and turns it
into one packet payload (:class:`AudioCodec`). Sizes and delays are in samples per channel at 48 kHz,
bitrates in bit/s. :func:`open_codec` picks one by name ("opus" or "pcm").

**Why Opus in restricted-low-delay mode with 10 ms frames.** Doorway's budget for audio is a few tens of
milliseconds mouth to ear. ``OPUS_APPLICATION_RESTRICTED_LOWDELAY`` runs CELT only, whose algorithmic
delay is 2.5 ms (120 samples of lookahead, :attr:`OpusCodec.lookahead_samples`) against 6.5 ms for the
SILK/hybrid modes, and 10 ms is the shortest frame at which CELT still codes full-band stereo music at
about 128 kb/s with good quality; shorter frames cost more header and more bits for the same quality.
``low_delay=False`` selects ``OPUS_APPLICATION_AUDIO`` (the encoder may then choose SILK or hybrid).

**Why libopus directly, through ctypes.** PyAV's Opus decoder (FFmpeg's native ``opus`` decoder, or its
``libopus`` wrapper) only ever decodes packets it is given: it never runs libopus's packet-loss concealment
(``opus_decode`` with no data) nor decodes in-band FEC (``decode_fec=1``), and a lost 10 ms packet would
then be a hole or a click. So :class:`OpusCodec` binds ``opus_encoder_*``/``opus_decoder_*`` from the
system's libopus (Debian's ``libopus0``), or failing that the copy bundled in PyAV's wheel
(``av.libs/libopus-*.so*``), with ctypes (:func:`load_libopus`).

**In-band FEC.** Opus carries a low-bitrate copy of the previous frame (SILK "LBRR") only in SILK and hybrid
packets. Restricted-low-delay never produces those, so with ``low_delay=True`` :meth:`AudioCodec.decode_fec`
always returns ``None``; with ``low_delay=False``, ``inband_fec=True`` and ``expected_loss_percent > 0``
the encoder switches to SILK/hybrid at speech-like bitrates (tens of kb/s) and then does carry FEC, also
in 10 ms frames. Doorway protects audio with its own packet redundancy instead; the FEC path is here for
completeness and for links where bitrate is scarce.

**Bad data.** :meth:`AudioCodec.decode` raises :class:`CodecError` for anything it cannot decode (empty,
truncated beyond repair, a packet that is not one 10 ms frame) and never returns noise for it; the caller
conceals the frame instead and counts it. Opus has no checksum of its own, so random bytes that happen to
form a valid packet do decode (to bounded audio: decoder output passes through libopus's soft clipper);
the transport's integrity check is what keeps corrupted packets out.

**Threads and allocation.** A codec object is not thread-safe: one object per thread (the encoder on the
capture side, the decoder on the receive side; an object may do both, on one thread). Each object
preallocates its input, packet and PCM buffers once; :meth:`AudioCodec.encode` allocates only the returned
``bytes`` and :meth:`AudioCodec.decode` only the returned array, a fresh copy the caller may keep (the
decode thread is not the sound card's real-time callback). Free libopus state with :meth:`AudioCodec.close`
(or a ``with`` block); garbage collection frees it too.
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 48_000
"""Samples per second per channel."""
CHANNELS: Final = 2
"""Interleaved channels: left, right."""
FRAME_SAMPLES: Final = 480
"""Samples per channel in one frame: 10 ms at 48 kHz."""

MIN_BITRATE_BPS: Final = 6_000
"""Lowest Opus bitrate accepted, bit/s."""
MAX_BITRATE_BPS: Final = 510_000
"""Highest Opus bitrate accepted, bit/s (the most Opus uses for stereo)."""
MAX_PACKET_BYTES: Final = 1500
"""Size of the encoder's output buffer; a 10 ms frame at 510 kb/s is 638 bytes."""

PCM_FRAME_BYTES: Final = FRAME_SAMPLES * CHANNELS * 2
"""One PCM frame: 16-bit little-endian interleaved stereo, 1920 bytes."""

Block = npt.NDArray[np.float32]
"""One frame of audio: float32, shape ``(FRAME_SAMPLES, CHANNELS)``, values in [-1, 1]."""

# opus_defines.h (stable ABI since libopus 1.0).
_OPUS_OK: Final = 0
_OPUS_APPLICATION_AUDIO: Final = 2049
_OPUS_APPLICATION_RESTRICTED_LOWDELAY: Final = 2051
_OPUS_SET_BITRATE_REQUEST: Final = 4002
_OPUS_SET_COMPLEXITY_REQUEST: Final = 4010
_OPUS_SET_INBAND_FEC_REQUEST: Final = 4012
_OPUS_SET_PACKET_LOSS_PERC_REQUEST: Final = 4014
_OPUS_GET_LOOKAHEAD_REQUEST: Final = 4027
_OPUS_RESET_STATE: Final = 4028

_PCM_SCALE: Final = 32767.0
"""Full scale of a 16-bit sample; used both ways so a round trip errs by at most half a step."""
_PCM_SILENT_GAIN: Final = 1e-5
"""Below this concealment gain (-100 dB, after 17 lost frames) PCM concealment is plain zeros."""
_PCM_CROSSFADE: Final = 48
"""Samples (1 ms) over which the first frame after a PCM concealment fades in from the concealment."""


class CodecError(Exception):
    """A frame could not be encoded or decoded, or libopus could not be loaded or set up."""


def _check_conceal(samples: int) -> None:
    if not (0 < samples <= FRAME_SAMPLES and samples % 120 == 0):
        raise ValueError(f"can conceal a multiple of 120 samples up to {FRAME_SAMPLES}, not {samples}")


def _check_bitrate(bps: int) -> None:
    if not MIN_BITRATE_BPS <= bps <= MAX_BITRATE_BPS:
        raise ValueError(f"bitrate must be {MIN_BITRATE_BPS}..{MAX_BITRATE_BPS} bit/s, got {bps}")


class AudioCodec(abc.ABC):
    """One 48 kHz stereo 10 ms codec: an encoder and a decoder sharing nothing but counters.

    ``name`` is the codec's name for :func:`open_codec`, ``lookahead_samples`` its algorithmic delay
    (samples per channel at 48 kHz: decoded audio lags the encoded audio by this much). Not thread-safe:
    use one object per thread.
    """

    name: str
    lookahead_samples: int

    def __init__(self) -> None:
        self._in = np.zeros((FRAME_SAMPLES, CHANNELS), np.float32)
        self.frames_encoded = 0
        self.frames_decoded = 0
        self.concealed = 0
        self.fec_decoded = 0
        self.decode_errors = 0
        self.closed = False

    def _prepare(self, block: Block) -> Block:
        """Copy ``block`` into the preallocated input buffer, clipped to [-1, 1], NaN as silence."""
        if not isinstance(block, np.ndarray) or block.dtype != np.float32:
            kind = block.dtype if isinstance(block, np.ndarray) else type(block).__name__
            raise CodecError(f"{self.name}: expected a float32 array, got {kind}")
        if block.shape != (FRAME_SAMPLES, CHANNELS):
            raise CodecError(f"{self.name}: expected shape {(FRAME_SAMPLES, CHANNELS)}, got {block.shape}")
        np.clip(block, -1.0, 1.0, out=self._in)
        if math.isnan(float(self._in.sum())):
            np.nan_to_num(self._in, copy=False, nan=0.0)
        return self._in

    def _bad(self, message: str) -> CodecError:
        """Count one undecodable packet and return the error to raise."""
        self.decode_errors += 1
        return CodecError(f"{self.name}: {message}")

    @abc.abstractmethod
    def encode(self, block: Block) -> bytes:
        """Encode one frame: ``block`` is float32 ``(FRAME_SAMPLES, CHANNELS)``; values outside [-1, 1]
        are clipped and NaN is coded as silence. Raises :class:`CodecError` on a wrong dtype or shape."""

    @abc.abstractmethod
    def decode(self, data: bytes) -> Block:
        """Decode one packet into a fresh float32 ``(FRAME_SAMPLES, CHANNELS)`` array in [-1, 1].

        Raises :class:`CodecError` (and counts ``decode_errors``) for data that is not one decodable
        10 ms frame; the caller should then :meth:`conceal`.
        """

    @abc.abstractmethod
    def conceal(self, samples: int = FRAME_SAMPLES) -> Block:
        """``samples`` (a multiple of 120, at most one frame) standing in for audio that has not arrived,
        continuing what was decoded before and fading out; float32 ``(samples, CHANNELS)``.

        Concealing less than a frame stretches the stream while a late packet may still come; the packet is
        then decoded as usual, continuing from the concealment.
        """

    def conceal_ahead(self, samples: int) -> Block:
        """What :meth:`conceal` would give now, without moving the decoder on: a concealment kept ready in
        case nothing comes in time (the sound card's callback plays it then).

        :meth:`adopt_ahead` moves the decoder to just after it, as if :meth:`conceal` had run — valid only
        while nothing else was decoded or concealed since. Counted as concealed only when adopted.
        """
        self._fork_decoder()
        try:
            block = self.conceal(samples)
        finally:
            self.concealed -= 1
            self._swap_decoder()
        return block

    def adopt_ahead(self) -> None:
        """The concealment :meth:`conceal_ahead` made was played: continue from after it."""
        self._swap_decoder()
        self.concealed += 1

    @abc.abstractmethod
    def _fork_decoder(self) -> None:
        """Copy the decoder's state into the spare one."""

    @abc.abstractmethod
    def _swap_decoder(self) -> None:
        """Exchange the decoder's state with the spare one."""

    @abc.abstractmethod
    def decode_fec(self, next_data: bytes) -> Block | None:
        """The frame before ``next_data``, rebuilt from the redundancy carried in ``next_data``.

        Call it when a packet was lost and the one after it has arrived, instead of :meth:`conceal`,
        then :meth:`decode` ``next_data`` as usual. ``None`` when ``next_data`` carries no such copy
        (or cannot be parsed); the caller then conceals.
        """

    @abc.abstractmethod
    def set_bitrate(self, bps: int) -> None:
        """Change the encoder's target bitrate (bit/s, 6 000..510 000) from the next frame on."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the decoder's history (after a stream restart), as if freshly opened."""

    def stats(self) -> dict[str, int]:
        """Counters since construction: frames encoded, decoded, concealed, rebuilt by FEC, bad packets."""
        return {
            "frames_encoded": self.frames_encoded,
            "frames_decoded": self.frames_decoded,
            "concealed": self.concealed,
            "fec_decoded": self.fec_decoded,
            "decode_errors": self.decode_errors,
        }

    def close(self) -> None:
        """Free native state. Idempotent; the object must not be used afterwards."""
        self.closed = True

    def __enter__(self) -> AudioCodec:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LibOpus:
    """The libopus functions Doorway calls, with their C signatures declared once.

    ``path`` is what was loaded and ``version`` libopus's own version string ("libopus 1.3.1"). The
    ``*_ctl`` functions are variadic, so they get no ``argtypes``; callers pass every argument as an
    explicit ctypes object (``c_void_p`` state, ``c_int`` request, ``c_int32`` value or pointer).
    """

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        c_int, c_int32, c_void_p = ctypes.c_int, ctypes.c_int32, ctypes.c_void_p
        float_p = ctypes.POINTER(ctypes.c_float)
        self.path = path
        lib.opus_get_version_string.argtypes = []
        lib.opus_get_version_string.restype = ctypes.c_char_p
        lib.opus_strerror.argtypes = [c_int]
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_encoder_create.argtypes = [c_int32, c_int, c_int, ctypes.POINTER(c_int)]
        lib.opus_encoder_create.restype = c_void_p
        lib.opus_encoder_destroy.argtypes = [c_void_p]
        lib.opus_encoder_destroy.restype = None
        lib.opus_encode_float.argtypes = [c_void_p, float_p, c_int, c_void_p, c_int32]
        lib.opus_encode_float.restype = c_int32
        lib.opus_encoder_ctl.restype = c_int
        lib.opus_decoder_create.argtypes = [c_int32, c_int, ctypes.POINTER(c_int)]
        lib.opus_decoder_create.restype = c_void_p
        lib.opus_decoder_destroy.argtypes = [c_void_p]
        lib.opus_decoder_get_size.argtypes = [c_int]
        lib.opus_decoder_get_size.restype = c_int
        lib.opus_decoder_destroy.restype = None
        lib.opus_decode_float.argtypes = [c_void_p, ctypes.c_char_p, c_int32, float_p, c_int, c_int]
        lib.opus_decode_float.restype = c_int
        lib.opus_decoder_ctl.restype = c_int
        lib.opus_pcm_soft_clip.argtypes = [float_p, c_int, c_int, float_p]
        lib.opus_pcm_soft_clip.restype = None
        lib.opus_packet_parse.argtypes = [
            ctypes.c_char_p,
            c_int32,
            ctypes.POINTER(ctypes.c_ubyte),
            ctypes.POINTER(c_void_p),
            ctypes.POINTER(ctypes.c_int16),
            ctypes.POINTER(c_int),
        ]
        lib.opus_packet_parse.restype = c_int
        self.lib = lib
        self.version: str = lib.opus_get_version_string().decode("ascii", "replace")

    def strerror(self, code: int) -> str:
        """libopus's message for a negative return ``code``."""
        message: bytes | None = self.lib.opus_strerror(code)
        return message.decode("ascii", "replace") if message else f"error {code}"


def _candidates() -> list[str]:
    """Where to look for libopus, in order: the system's, then the one in PyAV's wheel."""
    names: list[str] = []
    found = ctypes.util.find_library("opus")
    if found:
        names.append(found)
    if "libopus.so.0" not in names:
        names.append("libopus.so.0")
    try:
        import av
    except ImportError:
        return names
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    names.extend(str(p) for p in sorted(bundled.glob("libopus-*.so*")))
    return names


def load_libopus(candidates: Sequence[str] | None = None) -> LibOpus:
    """Load the first of ``candidates`` (default: the system's libopus, then PyAV's) that has every
    function Doorway needs. Raises :class:`CodecError` naming everything tried when none does."""
    tried: list[str] = []
    for path in _candidates() if candidates is None else candidates:
        try:
            return LibOpus(ctypes.CDLL(path), path)
        except (OSError, AttributeError) as exc:
            tried.append(f"{path} ({exc})")
    raise CodecError(
        "libopus not found: install Debian's libopus0 or PyAV's wheel; tried "
        + (", ".join(tried) or "nothing")
    )


@functools.cache
def _default_libopus() -> LibOpus:
    lib = load_libopus()
    log.info("audio codec: %s from %s", lib.version, lib.path)
    return lib


def libopus_version() -> str:
    """The version string of the libopus that :class:`OpusCodec` uses, e.g. "libopus 1.3.1"."""
    return _default_libopus().version


class OpusCodec(AudioCodec):
    """Opus through libopus: one encoder and one decoder, 48 kHz stereo, 10 ms frames.

    ``bitrate_bps`` is the encoder's target (bit/s, 6 000..510 000, VBR), ``complexity`` 0..10,
    ``low_delay`` picks ``OPUS_APPLICATION_RESTRICTED_LOWDELAY`` (CELT only, 120 samples of lookahead)
    over ``OPUS_APPLICATION_AUDIO`` (312). ``inband_fec`` and ``expected_loss_percent`` (0..100) tell the
    encoder to carry FEC, which it does only in SILK/hybrid packets, never with ``low_delay``. ``library``
    is the libopus to use (default: :func:`load_libopus`'s first choice).
    """

    name = "opus"

    def __init__(
        self,
        *,
        bitrate_bps: int = 128_000,
        complexity: int = 5,
        low_delay: bool = True,
        inband_fec: bool = False,
        expected_loss_percent: int = 0,
        library: LibOpus | None = None,
    ) -> None:
        super().__init__()
        self._enc: ctypes.c_void_p | None = None
        self._dec: ctypes.c_void_p | None = None
        _check_bitrate(bitrate_bps)
        if not 0 <= complexity <= 10:
            raise ValueError(f"complexity must be 0..10, got {complexity}")
        if not 0 <= expected_loss_percent <= 100:
            raise ValueError(f"expected_loss_percent must be 0..100, got {expected_loss_percent}")
        self._opus = library if library is not None else _default_libopus()
        self._lib: Any = self._opus.lib
        self.low_delay = low_delay
        application = _OPUS_APPLICATION_RESTRICTED_LOWDELAY if low_delay else _OPUS_APPLICATION_AUDIO
        error = ctypes.c_int(0)
        enc = self._lib.opus_encoder_create(SAMPLE_RATE, CHANNELS, application, ctypes.byref(error))
        if error.value != _OPUS_OK or not enc:
            raise CodecError(f"opus_encoder_create: {self._opus.strerror(error.value)}")
        self._enc = ctypes.c_void_p(enc)
        dec = self._lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(error))
        if error.value != _OPUS_OK or not dec:
            self.close()
            raise CodecError(f"opus_decoder_create: {self._opus.strerror(error.value)}")
        self._dec = ctypes.c_void_p(dec)
        # The spare decoder for conceal_ahead: libopus's decoder state is one block of
        # opus_decoder_get_size() bytes holding offsets, not pointers into itself (its API test copies and
        # compares it with memcpy/memcmp), so a byte copy is a working decoder — checked here: a copy
        # decodes bit for bit alike (tests/audio/test_codec.py).
        spare = self._lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(error))
        if error.value != _OPUS_OK or not spare:
            self.close()
            raise CodecError(f"opus_decoder_create: {self._opus.strerror(error.value)}")
        self._dec_spare: ctypes.c_void_p | None = ctypes.c_void_p(spare)
        self._dec_size = int(self._lib.opus_decoder_get_size(CHANNELS))
        try:
            self._encoder_ctl(_OPUS_SET_BITRATE_REQUEST, bitrate_bps)
            self._encoder_ctl(_OPUS_SET_COMPLEXITY_REQUEST, complexity)
            self._encoder_ctl(_OPUS_SET_INBAND_FEC_REQUEST, int(inband_fec))
            self._encoder_ctl(_OPUS_SET_PACKET_LOSS_PERC_REQUEST, expected_loss_percent)
            lookahead = ctypes.c_int32(0)
            self._encoder_ctl(_OPUS_GET_LOOKAHEAD_REQUEST, ctypes.byref(lookahead))
        except CodecError:
            self.close()
            raise
        self.lookahead_samples = lookahead.value
        self.bitrate_bps = bitrate_bps

        float_p = ctypes.POINTER(ctypes.c_float)
        self._in_ptr = self._in.ctypes.data_as(float_p)
        self._packet = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        self._pcm = np.zeros((FRAME_SAMPLES, CHANNELS), np.float32)
        self._pcm_ptr = self._pcm.ctypes.data_as(float_p)
        self._clip_mem = (ctypes.c_float * CHANNELS)()
        self._clip_spare = (ctypes.c_float * CHANNELS)()
        self._toc = ctypes.c_ubyte(0)
        self._frames = (ctypes.c_void_p * 48)()
        self._sizes = (ctypes.c_int16 * 48)()
        self._payload_offset = ctypes.c_int(0)

    def _encoder_ctl(self, request: int, arg: int | Any) -> None:
        value = ctypes.c_int32(arg) if isinstance(arg, int) else arg
        code = self._lib.opus_encoder_ctl(self._enc, ctypes.c_int(request), value)
        if code != _OPUS_OK:
            raise CodecError(f"opus_encoder_ctl({request}): {self._opus.strerror(code)}")

    def encode(self, block: Block) -> bytes:
        if self._enc is None:
            raise CodecError("opus: codec is closed")
        self._prepare(block)  # into self._in, which self._in_ptr points at
        n = self._lib.opus_encode_float(
            self._enc, self._in_ptr, FRAME_SAMPLES, self._packet, MAX_PACKET_BYTES
        )
        if n < 0:
            raise CodecError(f"opus_encode_float: {self._opus.strerror(n)}")
        self.frames_encoded += 1
        return ctypes.string_at(self._packet, n)

    def _decode_into_pcm(self, data: bytes | None, fec: int, samples: int = FRAME_SAMPLES) -> int:
        """Run opus_decode_float into the PCM buffer; soft-clip on success. Returns libopus's result."""
        if self._dec is None:
            raise CodecError("opus: codec is closed")
        n: int = self._lib.opus_decode_float(
            self._dec, data, 0 if data is None else len(data), self._pcm_ptr, samples, fec
        )
        if n > 0:
            self._lib.opus_pcm_soft_clip(self._pcm_ptr, n, CHANNELS, self._clip_mem)
        return n

    def _result(self, n: int, what: str, samples: int = FRAME_SAMPLES) -> Block:
        if n < 0:
            raise self._bad(f"{what}: {self._opus.strerror(n)}")
        if n != samples:
            raise self._bad(f"{what}: packet holds {n} samples per channel, expected {samples}")
        if not math.isfinite(float(self._pcm[:n].sum())):
            self.reset()
            raise self._bad(f"{what}: decoder produced non-finite samples (decoder reset)")
        return self._pcm[:n].copy()

    def decode(self, data: bytes) -> Block:
        if not data:
            # libopus reads an empty packet as "lost" and would conceal; for us it is bad data.
            raise self._bad("empty packet")
        block = self._result(self._decode_into_pcm(data, 0), "opus_decode_float")
        self.frames_decoded += 1
        return block

    def conceal(self, samples: int = FRAME_SAMPLES) -> Block:
        _check_conceal(samples)
        block = self._result(
            self._decode_into_pcm(None, 0, samples), "opus_decode_float (concealment)", samples
        )
        self.concealed += 1
        return block

    def has_fec(self, data: bytes) -> bool:
        """Whether packet ``data`` carries an in-band FEC copy of the frame before it.

        Port of libopus 1.5's ``opus_packet_has_lbrr`` (absent from older versions): SILK and hybrid
        packets signal LBRR with flag bits at the very start of the first frame's range-coded payload.
        """
        if not data:
            return False
        toc = data[0]
        config = toc >> 3
        if config >= 16:  # CELT only
            return False
        if config < 12:
            frame_ms = (10, 20, 40, 60)[config & 3]
        else:
            frame_ms = (10, 20)[config & 1]
        silk_frames = max(1, frame_ms // 20)
        count = self._lib.opus_packet_parse(
            data,
            len(data),
            ctypes.byref(self._toc),
            self._frames,
            self._sizes,
            ctypes.byref(self._payload_offset),
        )
        if count <= 0 or self._sizes[0] == 0:
            return False
        first = data[self._payload_offset.value]
        lbrr = (first >> (7 - silk_frames)) & 1
        if toc & 0x4:  # stereo: the side channel's flag follows the mid channel's VAD and LBRR flags
            lbrr |= (first >> (6 - 2 * silk_frames)) & 1
        return bool(lbrr)

    def decode_fec(self, next_data: bytes) -> Block | None:
        if not self.has_fec(next_data):
            return None
        try:
            block = self._result(self._decode_into_pcm(next_data, 1), "opus_decode_float (fec)")
        except CodecError:
            return None
        self.fec_decoded += 1
        return block

    def _fork_decoder(self) -> None:
        if self._dec is None or self._dec_spare is None:
            raise CodecError("opus: codec is closed")
        ctypes.memmove(self._dec_spare, self._dec, self._dec_size)
        ctypes.memmove(self._clip_spare, self._clip_mem, ctypes.sizeof(self._clip_mem))

    def _swap_decoder(self) -> None:
        self._dec, self._dec_spare = self._dec_spare, self._dec
        self._clip_mem, self._clip_spare = self._clip_spare, self._clip_mem

    def set_bitrate(self, bps: int) -> None:
        _check_bitrate(bps)
        self._encoder_ctl(_OPUS_SET_BITRATE_REQUEST, bps)
        self.bitrate_bps = bps

    def reset(self) -> None:
        if self._dec is not None:
            self._lib.opus_decoder_ctl(self._dec, ctypes.c_int(_OPUS_RESET_STATE))
        self._clip_mem[0] = self._clip_mem[1] = 0.0

    def close(self) -> None:
        # getattr: __del__ may run on an object whose __init__ failed early.
        enc, dec = getattr(self, "_enc", None), getattr(self, "_dec", None)
        spare = getattr(self, "_dec_spare", None)
        self._enc = self._dec = self._dec_spare = None
        super().close()
        if enc is not None:
            self._lib.opus_encoder_destroy(enc)
        for d in (dec, spare):
            if d is not None:
                self._lib.opus_decoder_destroy(d)

    def __del__(self) -> None:
        self.close()


class PcmCodec(AudioCodec):
    """Uncompressed 16-bit little-endian interleaved stereo, 1920 bytes per 10 ms frame (1.536 Mb/s).

    For a LAN, where bitrate is free and the codec should cost no delay (``lookahead_samples`` is 0) and
    no CPU. Samples are scaled by 32767 both ways, so a round trip errs by at most 1/65534.

    Concealment plays the last decoded frame again, alternately backwards and forwards so the waveform
    stays continuous at every frame edge, under a gain that falls smoothly by half per frame (-6 dB per
    10 ms), reaching zeros after about 17 frames. The first frame decoded after a concealment fades in
    from it over 1 ms, so neither the loss nor the recovery clicks.
    """

    name = "pcm"
    lookahead_samples = 0

    def __init__(self) -> None:
        super().__init__()
        self._i16 = np.zeros((FRAME_SAMPLES, CHANNELS), "<i2")
        self._out = np.zeros((FRAME_SAMPLES, CHANNELS), np.float32)
        self._last = np.zeros((FRAME_SAMPLES, CHANNELS), np.float32)
        self._next = np.zeros((FRAME_SAMPLES, CHANNELS), np.float32)
        self._have_last = False
        self._run = 0
        self._run_spare = 0
        ramp = np.linspace(1.0, 0.5, FRAME_SAMPLES, endpoint=False, dtype=np.float32)
        self._ramp = ramp.reshape(FRAME_SAMPLES, 1)
        self._ramp_scratch = np.zeros((FRAME_SAMPLES, 1), np.float32)
        self._fade_in = np.linspace(0.0, 1.0, _PCM_CROSSFADE, endpoint=False, dtype=np.float32).reshape(
            _PCM_CROSSFADE, 1
        )
        self._fade_scratch = np.zeros((_PCM_CROSSFADE, CHANNELS), np.float32)

    def encode(self, block: Block) -> bytes:
        pcm = self._prepare(block)
        np.multiply(pcm, _PCM_SCALE, out=pcm)
        np.rint(pcm, out=pcm)
        np.copyto(self._i16, pcm, casting="unsafe")
        self.frames_encoded += 1
        return self._i16.tobytes()

    def _conceal_into(self, out: Block, run: int) -> None:
        """Concealment frame number ``run`` (1 = the first lost frame) into ``out``."""
        gain = 0.5 ** (run - 1)
        if not self._have_last or gain < _PCM_SILENT_GAIN:
            out.fill(0.0)
            return
        source = self._last[::-1] if run % 2 else self._last
        np.multiply(self._ramp, np.float32(gain), out=self._ramp_scratch)
        np.multiply(source, self._ramp_scratch, out=out)

    def decode(self, data: bytes) -> Block:
        if len(data) != PCM_FRAME_BYTES:
            raise self._bad(f"expected {PCM_FRAME_BYTES} bytes, got {len(data)}")
        samples = np.frombuffer(data, "<i2").reshape(FRAME_SAMPLES, CHANNELS)
        out = self._out
        np.multiply(samples, np.float32(1.0 / _PCM_SCALE), out=out)
        np.maximum(out, -1.0, out=out)  # -32768 would be a hair below -1
        if self._run:
            # What concealment would have played next, faded out under the real audio fading in.
            self._conceal_into(self._next, self._run + 1)
            head = out[:_PCM_CROSSFADE]
            tail = self._next[:_PCM_CROSSFADE]
            np.subtract(head, tail, out=self._fade_scratch)
            np.multiply(self._fade_scratch, self._fade_in, out=self._fade_scratch)
            np.add(tail, self._fade_scratch, out=head)
            self._run = 0
        np.copyto(self._last, out)
        self._have_last = True
        self.frames_decoded += 1
        return out.copy()

    def conceal(self, samples: int = FRAME_SAMPLES) -> Block:
        _check_conceal(samples)
        self._run += 1
        self._conceal_into(self._out, self._run)
        self.concealed += 1
        return self._out[:samples].copy()

    def decode_fec(self, next_data: bytes) -> Block | None:
        return None

    def _fork_decoder(self) -> None:
        # Concealment moves only the run count (the last frame stays): that is the whole state to fork.
        self._run_spare = self._run

    def _swap_decoder(self) -> None:
        self._run, self._run_spare = self._run_spare, self._run

    def set_bitrate(self, bps: int) -> None:
        """Checks ``bps`` like Opus does, then ignores it: PCM's bitrate is fixed."""
        _check_bitrate(bps)

    def reset(self) -> None:
        self._have_last = False
        self._run = 0
        self._last.fill(0.0)


def open_codec(
    name: str,
    *,
    bitrate_bps: int = 128_000,
    complexity: int = 5,
    low_delay: bool = True,
    inband_fec: bool = False,
    expected_loss_percent: int = 0,
) -> AudioCodec:
    """Open the codec called ``name`` ("opus" or "pcm"); PCM ignores the Opus settings.

    Raises ``ValueError`` for an unknown name or an out-of-range setting, :class:`CodecError` when
    libopus cannot be loaded or set up.
    """
    if name == "opus":
        return OpusCodec(
            bitrate_bps=bitrate_bps,
            complexity=complexity,
            low_delay=low_delay,
            inband_fec=inband_fec,
            expected_loss_percent=expected_loss_percent,
        )
    if name == "pcm":
        return PcmCodec()
    raise ValueError(f"No audio codec named {name!r}")
