"""Lock-free single-producer single-consumer rings between the sound card's thread and the audio threads.

The sound card's callback must never wait for a lock another thread holds, and must not allocate arrays,
so the audio path crosses threads through preallocated rings: :class:`SampleRing` carries played samples
(audio-playout thread → device callback), :class:`FrameRing` carries captured 10 ms frames with their
speaker reference (device callback → audio-send thread).

Theory of operation: each ring has two monotonically increasing counters, ``written`` (only the producer
assigns it) and ``read`` (only the consumer assigns it). Under CPython an int attribute store is atomic, and
the producer publishes ``written`` only after the data is in place, so the consumer never sees a slot before
its data; the producer never overwrites a slot the consumer has not released, because it checks ``read``
first. Units: samples per channel at 48 kHz.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Block = npt.NDArray[np.float32]


class SampleRing:
    """A FIFO of stereo float32 samples, ``capacity`` samples long (producer: one thread, consumer: one)."""

    def __init__(self, capacity: int, channels: int = 2) -> None:
        self.capacity = capacity
        self.channels = channels
        self._data = np.zeros((capacity, channels), np.float32)
        self.written = 0
        """Samples written since creation (producer)."""
        self.read = 0
        """Samples read (or skipped) since creation (consumer)."""

    @property
    def level(self) -> int:
        """Samples written and not yet read (any thread; a snapshot)."""
        return self.written - self.read

    @property
    def free(self) -> int:
        return self.capacity - (self.written - self.read)

    def write(self, block: Block) -> int:
        """Append as much of ``block`` (float32 ``(n, channels)``) as fits (producer); returns how much."""
        n = min(len(block), self.capacity - (self.written - self.read))
        if n <= 0:
            return 0
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self._data[start : start + first] = block[:first]
        if first < n:
            self._data[: n - first] = block[first:n]
        self.written += n
        return n

    def read_into(self, out: Block) -> int:
        """Fill ``out`` from the ring (consumer, allocation-free): returns the samples taken; the rest of
        ``out`` is zeroed."""
        want = len(out)
        n = min(want, self.written - self.read)
        if n > 0:
            start = self.read % self.capacity
            first = min(n, self.capacity - start)
            np.copyto(out[:first], self._data[start : start + first])
            if first < n:
                np.copyto(out[first:n], self._data[: n - first])
            self.read += n
        if n < want:
            out[max(n, 0) :] = 0.0
        return max(n, 0)


class FrameRing:
    """A ring of ``slots`` preallocated frames, each ``arrays`` blocks of ``(frame, channels)`` float32 plus
    two int64 stamps (producer: the device callback; consumer: one audio thread)."""

    def __init__(self, slots: int, arrays: int, frame: int, channels: int = 2) -> None:
        self.slots = slots
        self.blocks = np.zeros((arrays, slots, frame, channels), np.float32)
        self.stamps = np.zeros((slots, 2), np.int64)
        self.written = 0
        self.read = 0

    def __len__(self) -> int:
        return self.written - self.read

    @property
    def full(self) -> bool:
        return self.written - self.read >= self.slots
