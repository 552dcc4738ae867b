"""
What a node and its clients agree on about where a node may be reached
without TLS: the loopback hosts.
"""

#: The hosts a plaintext node listens on, and a plaintext client connects
#: to: this machine only (pickles are code, and plaintext has no proof of
#: who is on the other end).
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
