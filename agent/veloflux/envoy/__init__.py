"""Everything that talks to Envoy: the admin API client, its reply parsers, EDS rendering,
the source and the sink.
"""
