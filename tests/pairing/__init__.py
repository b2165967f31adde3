"""Tests of app/pairing: codes, the sans-I/O exchange, and the TCP server, client and commands."""
