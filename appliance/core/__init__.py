"""The shared core: wire formats, packets, flow keys, transfers, capture files, errors."""
