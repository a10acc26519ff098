"""interceptd, the assistant host's program: capture of the target's answers, published per shard."""
