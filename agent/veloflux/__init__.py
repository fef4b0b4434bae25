"""VeloFlux: a control-plane agent that sets HAProxy and Envoy backend weights.

It never proxies a request. Each tick it observes the proxy, plans weights under
safety rules, and writes them (or, in dry-run, only shows them).
"""

__version__ = "0.1.0"
