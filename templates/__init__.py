"""Jinja templates shipped with VeloFlux (Envoy EDS/CDS)."""
