"""One tick for any proxy, wired from a config: the ports (Source, Sink), the tick, the
fleet of proxies, building the adapters, recording history, training as a config asks.
"""
