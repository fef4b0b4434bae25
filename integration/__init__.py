"""The local stack: demo backends, load generator and native launcher for tests, demo and benchmarks."""
