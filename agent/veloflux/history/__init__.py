"""The agent's memory: the SQLite journal, frames of samples, per-interval rates, the
recent window, the recorder.
"""
