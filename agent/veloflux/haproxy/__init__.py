"""Everything that talks to HAProxy: the runtime API client, its reply parsers, the source
and the sink.
"""
