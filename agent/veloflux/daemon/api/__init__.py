"""The daemon's HTTP API: the server, the fields it reads and writes, and the client the
CLI uses.
"""
