"""Pairing two doorways with a short code: codes (code.py), the exchange (protocol.py, sans-I/O), its TCP
server and client (server.py, client.py) and the ``doorway pair`` / ``doorway identity`` commands
(commands.py). Importing the package imports nothing heavy."""
