"""C{python -m asynqueue.node}: run a worker node (C{--child}: be a queue's child)."""

import sys

if sys.argv[1:2] == ["--child"]:
    from asynqueue.node.child import childMain

    childMain()
else:
    from asynqueue.node.service import main

    main()
