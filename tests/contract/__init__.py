"""Contract suites every plug-in (target family) must pass."""
