"""The room controller's firmware (MicroPython on the Raspberry Pi Pico): ``protocol_core`` and ``main``.

Not imported by the host bridge. The two modules are copied to the board as top-level files (README.md);
CPython imports them from here for the emulator and the tests.
"""
