"""The LAN admin panel (FastAPI) — its own process, talking to the engine over its control socket.

Package root only: the panel is tracked as its own issue. The engine does not import it.
"""
