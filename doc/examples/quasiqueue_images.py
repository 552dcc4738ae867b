"""
QuasiQueue's image processor, on an asynqueue ProcessQueue.

A list of image files goes to the writer, which hands it out
``desired`` names at a time; reader processes turn each image into a
processed copy. QuasiQueue's ``context`` function becomes the queue's
``initializer``: it runs once in each worker process, and the reader
reaches what it returned through `asynqueue.context`. When the list runs
out the writer returns an empty list, which ends the feeder.

The images are small grey-scale PGM files (a text header and raw bytes)
made in a temporary folder, so nothing but asynqueue is needed; the
processing inverts them and halves their width.

Run it with ``.venv/bin/python doc/examples/quasiqueue_images.py``; the
``IMAGES_WORKERS`` variable (or QuasiQueue's ``IMAGES_NUM_PROCESSES``) sets
the number of processes.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

import asynqueue
from asynqueue import ProcessQueue
from asynqueue.feed import feed

COUNT = 200


def context(outdir: str) -> dict[str, Any]:
    """Runs once in each reader process; the reader gets what it returns."""
    return {"outdir": Path(outdir), "pid": os.getpid()}


def reader(path: str) -> int:
    """Process one image: invert it and halve its width; say which process did it."""
    ctx = asynqueue.context()
    header, pixels = Path(path).read_bytes().split(b"\n", 1)
    _, width, height, _ = header.split()
    w, h = int(width), int(height)
    out = bytearray()
    for y in range(h):
        row = pixels[y * w : (y + 1) * w]
        out += bytes(255 - (row[x] + row[x + 1]) // 2 for x in range(0, w - 1, 2))
    target = ctx["outdir"] / Path(path).name
    target.write_bytes(f"P5 {w // 2} {h} 255\n".encode() + bytes(out))
    return int(ctx["pid"])


def makeImages(folder: Path, count: int) -> list[str]:
    """The file list: ``count`` 64 x 48 grey-scale images."""
    folder.mkdir()
    paths = []
    for n in range(count):
        pixels = bytes((x * 4 + y * 2 + n) % 256 for y in range(48) for x in range(64))
        path = folder / f"image{n:04d}.pgm"
        path.write_bytes(b"P5 64 48 255\n" + pixels)
        paths.append(str(path))
    return paths


async def main(reactor: Any) -> None:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        filelist = iter(makeImages(Path(tmp) / "in", COUNT))
        outdir = Path(tmp) / "out"
        outdir.mkdir()

        def writer(desired: int) -> list[str]:
            """Hand out the next names; an empty list when there are none left."""
            return list(itertools.islice(filelist, desired))

        # One process per core, unless IMAGES_WORKERS (or ASYNQUEUE_WORKERS) says.
        queue = ProcessQueue(
            name="images", initializer=context, initargs=(str(outdir),)
        )
        processes = len(queue.workers())
        try:
            feeder = feed(queue, writer, reader, lowWater=8, blockSize=10)
            await feeder.join()
        finally:
            await queue.shutdown()
        made = len(list(outdir.iterdir()))
        stats = feeder.stats()
        print(
            f"fed {stats.fed} images in {stats.asks} asks to "
            f"{processes} processes; {made} processed files "
            f"in {time.monotonic() - t0:.2f} s"
        )
        if made != COUNT or stats.done != COUNT:
            raise SystemExit(1)


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
