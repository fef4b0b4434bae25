"""One tick for any proxy: the ports (Source, Sink), the tick, the fleet of proxies, wiring
from a config.
"""
