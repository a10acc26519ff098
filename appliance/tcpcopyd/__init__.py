"""tcpcopyd, the online host's program: supervisor, control handlers, status, metrics, offline replay."""
