"""omnitune's benchmarks: `make bench` runs them all (`python -m bench.run`)."""
