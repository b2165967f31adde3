"""The bridge to the room's microcontroller (lighting, sensors) over USB serial — its own process.

Package root only: the bridge itself is tracked as its own issue. The engine does not import it.
"""
