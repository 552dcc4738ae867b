"""
Helpers that run asynqueue's peers for the benchmarks.

C{aq099} runs AsynQueue 0.9.9 in a virtualenv of its own and prints JSON;
C{ampouleChild} holds the ampoule child protocol, which ampoule's child
processes import by name.
"""
