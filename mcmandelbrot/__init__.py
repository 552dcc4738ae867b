"""The mcmandelbrot demo: the Mandelbrot set rendered with asynqueue."""
