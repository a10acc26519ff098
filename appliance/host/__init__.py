"""What touches the host: raw sockets, the socket table, privileges, the run directory, CURVE key files, systemd."""
