"""A local stand-in for the Chamelaion API, for `make demo`, the tests and the benchmarks."""

from dubrunner.emulator.content import PREFIX, output_content
from dubrunner.emulator.model import Emulator, EmulatorConfig, RemoteRequest, Stats

__all__ = ["PREFIX", "Emulator", "EmulatorConfig", "RemoteRequest", "Stats", "output_content"]
