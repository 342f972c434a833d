"""The drivers over real loopback sockets."""
