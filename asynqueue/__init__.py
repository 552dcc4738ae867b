"""
asynqueue: prioritized Deferred task queues for Twisted.

Send calls to workers in the reactor, in threads, in child processes and
on remote nodes; every call returns a Deferred.
"""
