"""Leaf helpers with no knowledge of proxies: names, durations, files, events, heap, logs."""
