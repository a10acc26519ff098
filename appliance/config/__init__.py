"""Configuration: the key table, loading files and flags, the children's specs."""
