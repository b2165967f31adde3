"""Audio: 48 kHz stereo capture, echo cancellation, Opus, jitter buffer and playout."""
