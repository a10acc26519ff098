"""tcpcopy-py: replicate live TCP sessions to a test server, statefully."""

__version__ = "0.2.0"
