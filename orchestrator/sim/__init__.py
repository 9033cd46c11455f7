"""The device simulator: real ``sshd`` devices on loopback, for tests, demos and benchmarks."""
