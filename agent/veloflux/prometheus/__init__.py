"""Everything that talks to Prometheus: the HTTP API client, PromQL placeholders, per-tick
features, history pulls.
"""
