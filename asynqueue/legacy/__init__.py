"""
AsynQueue 0.9.9's APIs, kept for its users on today's design: the names
its code imports (from C{asynqueue.iteration}, C{asynqueue.threads},
C{asynqueue.util}, C{asynqueue.info} and the top level) live here and are
re-exported from there. New code has better ways; see the migration guide.
"""
