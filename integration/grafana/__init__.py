"""Grafana for the VeloFlux stack: the dashboard generator and its provisioning."""
