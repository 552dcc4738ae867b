"""C{python -m mcmandelbrot}: the same as the C{mcm} command."""

from mcmandelbrot import run

run()
