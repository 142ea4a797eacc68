"""The shared in-run measurement harness (protocol, energy, sampling, results)."""
