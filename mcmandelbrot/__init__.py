"""The mcmandelbrot demo: renders the Mandelbrot set with asynqueue (coming with its issue)."""
