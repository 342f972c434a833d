"""The pure core on plain values: no sockets, no files, ``now`` passed in."""
