"""Tests of hwcontrol: the MCU protocol and (in firmware/) the MicroPython firmware."""
