"""
The numerics: escape times with numpy, smooth colouring, PNG tiles.

Everything here runs in the worker processes (or inline, for the plain
loop of the benchmark): a call takes a few numbers and returns bytes, so
that little travels each way.
"""

from __future__ import annotations

import io
import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "BAILOUT",
    "PALETTE",
    "colourize",
    "escapeValues",
    "renderRows",
    "renderTile",
    "warmUp",
]

#: Escape radius. A large one makes the smooth count continuous.
BAILOUT = 256.0
_BAILOUT2 = BAILOUT * BAILOUT
_LOG2 = math.log(2.0)
#: How close z must come back to itself to count as a cycle. An outside
#: point crawling this slowly (near a parabolic point such as 1/4) takes
#: millions of iterations to escape: beyond any maxIter in use.
_CYCLE_TOLERANCE = 1e-12

#: The gradient, as (position, (red, green, blue)); it wraps around at 1.
PALETTE: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 7, 100)),
    (0.16, (32, 107, 203)),
    (0.42, (237, 255, 255)),
    (0.6425, (255, 170, 0)),
    (0.8575, (0, 2, 0)),
)
#: How many times the gradient repeats per doubling of the escape count.
CYCLES = 0.5
_POSITIONS = np.array([p for p, _ in PALETTE] + [1.0])
_CHANNELS = np.array([c for _, c in PALETTE] + [PALETTE[0][1]], dtype=float).T

FloatArray = npt.NDArray[np.float64]


def _insideKnownRegions(cx: FloatArray, cy: FloatArray) -> npt.NDArray[np.bool_]:
    """Points in the main cardioid or the period-2 bulb: they never escape."""
    xq = cx - 0.25
    y2 = cy * cy
    q = xq * xq + y2
    cardioid = q * (q + xq) <= 0.25 * y2
    bulb = (cx + 1.0) ** 2 + y2 <= 0.0625
    return cardioid | bulb


def escapeValues(cx: FloatArray, cy: FloatArray, maxIter: int) -> FloatArray:
    """
    The smooth escape count of every point C{cx + cy·j}; -1 where it stays.

    The count is M{n + 1 - log2(ln|z|)} at the first iteration C{n} (from
    0) with M{|z| > BAILOUT}. Only points still iterating are computed:
    the arrays shrink as points escape.
    """
    shape = cx.shape
    cx = np.ravel(cx).astype(np.float64)
    cy = np.ravel(cy).astype(np.float64)
    out = np.full(cx.shape, -1.0)
    index = np.flatnonzero(~_insideKnownRegions(cx, cy))
    cx, cy = cx[index], cy[index]
    x = np.zeros_like(cx)
    y = np.zeros_like(cy)
    # x², y² and |z|² of the current z, kept from one iteration to the next.
    x2 = np.zeros_like(cx)
    y2 = np.zeros_like(cy)
    r2 = np.empty_like(cx)
    # Orbits caught in a cycle are inside: z is compared with a snapshot
    # every 8 iterations, so a cycle of period p shows within 8p of the
    # snapshot; the snapshot is retaken at 16, 32, 64, ... (Brent).
    xs = x.copy()
    ys = y.copy()
    nextSnapshot = 16
    # An escaped point is frozen at z = c = 0, which stays put, matches its
    # snapshot and marks it (c = 0 itself is in the cardioid, so not here);
    # it is dropped later: shrinking eight arrays at every escape would
    # cost more than the iterations.
    frozen = 0
    for n in range(maxIter):
        if frozen == index.size:
            break
        # The same operations as the scalar x, y = x*x - y*y + cx, 2*x*y + cy
        # (doubling is exact), so the results are identical to the bit.
        np.add(x, x, out=x)
        np.multiply(x, y, out=y)
        np.add(y, cy, out=y)
        np.subtract(x2, y2, out=x)
        np.add(x, cx, out=x)
        np.multiply(x, x, out=x2)
        np.multiply(y, y, out=y2)
        np.add(x2, y2, out=r2)
        if r2.max() > _BAILOUT2:
            gone = np.flatnonzero(r2 > _BAILOUT2)
            out[index[gone]] = n + 1 - np.log(0.5 * np.log(r2[gone])) / _LOG2
            for a in (x, y, x2, y2, cx, cy, xs, ys):
                a[gone] = 0.0
            frozen += gone.size
        drop = None
        if n & 7 == 7:
            drop = (np.abs(x - xs) + np.abs(y - ys)) < _CYCLE_TOLERANCE
            if n + 1 == nextSnapshot:
                nextSnapshot *= 2
                np.copyto(xs, x)
                np.copyto(ys, y)
        elif 4 * frozen > index.size:
            drop = (cx == 0.0) & (cy == 0.0)
        if drop is not None and drop.any():
            keep = np.flatnonzero(~drop)
            index = index[keep]
            cx, cy, x, y, x2, y2, xs, ys = (
                a[keep] for a in (cx, cy, x, y, x2, y2, xs, ys)
            )
            r2 = r2[: keep.size]
            frozen = 0
    return out.reshape(shape)


def colourize(values: FloatArray) -> npt.NDArray[np.uint8]:
    """
    RGB colours (last axis) for smooth escape counts; black where -1.

    The gradient position is M{CYCLES · log2(1 + value)} modulo 1, so
    detail stays visible at any depth of zoom.
    """
    inside = values < 0
    t = np.mod(CYCLES * np.log2(1.0 + np.where(inside, 0.0, values)), 1.0)
    rgb = np.empty(values.shape + (3,), dtype=np.uint8)
    for k in range(3):
        channel = np.rint(np.interp(t, _POSITIONS, _CHANNELS[k]))
        channel[inside] = 0
        rgb[..., k] = channel
    return rgb


def _grid(
    x0: float,
    y0: float,
    size: float,
    firstCol: int,
    nCols: int,
    firstRow: int,
    nRows: int,
) -> tuple[FloatArray, FloatArray]:
    """
    The pixel centres: column C{k} at M{x0 + (k + ½)·size}, row C{k} (down)
    at M{y0 - (k + ½)·size}.

    From absolute indices, so that a pixel has the same coordinates in
    whatever block or tile it is computed.
    """
    xs = x0 + (np.arange(firstCol, firstCol + nCols) + 0.5) * size
    ys = y0 - (np.arange(firstRow, firstRow + nRows) + 0.5) * size
    return np.broadcast_to(xs, (nRows, nCols)), np.broadcast_to(
        ys[:, None], (nRows, nCols)
    )


def renderRows(
    x0: float,
    y0: float,
    size: float,
    firstCol: int,
    nCols: int,
    firstRow: int,
    nRows: int,
    maxIter: int,
) -> bytes:
    """
    RGB pixels, top row first, as raw bytes: C{nRows} rows from C{firstRow}
    of C{nCols} columns from C{firstCol}, of the image whose top left corner
    is C{x0 + y0·j} and whose pixels are C{size} wide.
    """
    cx, cy = _grid(x0, y0, size, firstCol, nCols, firstRow, nRows)
    return colourize(escapeValues(cx, cy, maxIter)).tobytes()


def renderTile(
    x0: float,
    y0: float,
    size: float,
    firstCol: int,
    nCols: int,
    firstRow: int,
    nRows: int,
    maxIter: int,
) -> bytes:
    """The same pixels as L{renderRows}, as a PNG file's bytes."""
    import png

    rgb = renderRows(x0, y0, size, firstCol, nCols, firstRow, nRows, maxIter)
    stride = 3 * nCols
    rows = (rgb[i : i + stride] for i in range(0, len(rgb), stride))
    out = io.BytesIO()
    png.Writer(nCols, nRows, greyscale=False, bitdepth=8).write(out, rows)
    return out.getvalue()


def warmUp() -> bool:
    """Import and run everything once, so that the first real block is not slower."""
    renderTile(-2.0, 1.0, 0.5, 0, 2, 0, 2, 4)
    return True
