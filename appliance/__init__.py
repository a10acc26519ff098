"""tcpcopy-py: replicate live TCP sessions to a test server, statefully."""

__version__ = "0.1.0"
