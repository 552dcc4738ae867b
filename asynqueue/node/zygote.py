"""
The zygote: a clean process that forks a queue's children on request.

A process worker that starts its children by fork (see
L{asynqueue.workers.spawning}) starts one zygote, a fresh interpreter
that imports the child runtime (no Twisted: see L{asynqueue.node.child})
and the user's initializer modules once, runs no reactor and no thread,
and then waits (importing, once idle, what only some calls need). Asked
for a child, it forks: the child gets the descriptors the parent sent
with the request as its 1 to 6 (output, the wire, the start note and the
result ring, just as a spawned child gets them) and becomes a child node
(L{asynqueue.node.child.childMain}) at once, with nothing left to
import.

The zygote stays the parent of its children: it reaps each one as it
ends and reports its pid and exit status to the queue's process. Each
child dies with the zygote (C{PR_SET_PDEATHSIG}), and the zygote dies
with the queue's process, so nothing outlives the program.

The conversation is over a C{SOCK_SEQPACKET} Unix socket on descriptor 3,
one message a packet::

    parent -> zygote   fork ID              (with six descriptors)
    zygote -> parent   forked ID PID
    zygote -> parent   failed ID MESSAGE
    zygote -> parent   ended PID STATUS     (STATUS as os.waitpid gives it)

The zygote ends when the parent closes the socket, once its children have
ended.
"""

from __future__ import annotations

import _socket
import array
import fcntl
import gc
import os
import select
import signal
import sys

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


#: The descriptors a child gets, in the order they come with a request.
CHILD_FDS = (1, 2, 3, 4, 5, 6)

#: Where the zygote finds its socket to the parent.
ZYGOTE_FD = 3

_PR_SET_PDEATHSIG = 1

#: What only some calls need, imported once the zygote has been idle for
#: L{IDLE_SECONDS}, one module a time (so that the first children, which
#: the queue asks for at once, never wait for them): cloudpickle, for
#: results and by-value classes that plain pickle cannot take (a function
#: pickled by value loads without it: see L{asynqueue.plain.loadsByValue});
#: Twisted, for calls that return a Deferred or another awaitable (see
#: L{asynqueue.node.child}).
IDLE_PRELOAD = ("cloudpickle", "twisted.internet.defer", "asynqueue.util")
IDLE_SECONDS = 0.05

#: How the zygote is started (the modules to preload follow, as arguments).
ZYGOTE_MAIN = "from asynqueue.node.zygote import zygoteMain; zygoteMain()"


def _dieWithParent() -> None:
    """Have the kernel kill this process (SIGKILL) when its parent dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _preload(modules: list[str]) -> None:
    """
    Import what every child needs before it can work, once, here.

    The child runtime needs no Twisted (a child imports it only for a call
    that returns a Deferred or another awaitable) nor cloudpickle (see
    L{IDLE_PRELOAD}), so this is quick.
    """
    import asynqueue.node.child  # noqa: F401

    for name in modules:
        try:
            __import__(name)
        except BaseException:
            # The child imports it again when a call needs it, and reports
            # the error where the user can see it: with that call.
            pass
    if "twisted.internet.reactor" in sys.modules:
        # A module installed a reactor as it was imported; the children
        # would share its descriptors. Start again without the modules:
        # each child imports them itself, as a spawned one would.
        sys.stderr.write(
            f"zygote: not preloading {', '.join(modules)}: importing it "
            "installs a reactor\n"
        )
        sys.stderr.flush()
        os.set_inheritable(ZYGOTE_FD, True)
        os.execv(sys.executable, [sys.executable, "-c", ZYGOTE_MAIN])


def _importQuietly(name: str) -> None:
    """Import C{name} if it can be; a child that needs it says why it cannot."""
    try:
        __import__(name)
    except BaseException:
        pass


def _becomeChild(fds: list[int], parentPid: int) -> NoReturn:
    """In a forked child: take the request's descriptors and be a child node."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _dieWithParent()
        if os.getppid() != parentPid:
            # The zygote died before the line above: nobody would end us.
            os._exit(code)
        # Out of the way of the numbers they must end up as, then in place.
        high = [os.dup(fd) for fd in fds]
        for fd in fds:
            os.close(fd)
        high = [_above(fd, max(CHILD_FDS)) for fd in high]
        for target, fd in zip(CHILD_FDS, high, strict=True):
            os.dup2(fd, target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(max(CHILD_FDS) + 1, _maxFD())
        from asynqueue.node.child import childMain

        code = 0
        childMain()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        _exitChild(code)


def _exitChild(code: int) -> NoReturn:
    """End a forked child as an interpreter would end, but never return."""
    try:
        import atexit

        if code == 0:
            import threading

            # As a spawned child (an interpreter) does at its end, and as
            # multiprocessing's children do: the threads a task started
            # that are not daemons finish first. (Its parent kills a child
            # that takes too long.) A child that failed just ends.
            try:
                threading._shutdown()  # type: ignore[attr-defined]
            except BaseException:
                # Its exit handlers run all the same (a signal handler a
                # task installed may raise here).
                import traceback

                traceback.print_exc()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    finally:
        os._exit(code)


def _above(fd: int, floor: int) -> int:
    """C{fd}, moved to a number above C{floor} if it is not."""
    if fd > floor:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, floor + 1)
    os.close(fd)
    return moved


def _receiveFds(
    sock: _socket.socket, size: int, maxFds: int
) -> tuple[bytes, list[int]]:
    """
    C{socket.recv_fds}, on the C{_socket} module: importing C{socket}
    (its enums, C{selectors}) would take a tenth of the zygote's start.
    """
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(size, _socket.CMSG_LEN(maxFds * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _maxFD() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (AttributeError, ValueError, OSError):
        return 1024


class Zygote:
    """The zygote's loop: fork on request, reap and report what ended."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.children: set[int] = set()
        self.pid = os.getpid()
        self.wakeRead, self.wakeWrite = os.pipe()
        for fd in (self.wakeRead, self.wakeWrite):
            os.set_blocking(fd, False)
        # A child's end wakes the loop through the pipe (the handler itself
        # does nothing; Python writes the signal's number there).
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wakeWrite)

    def send(self, message: str) -> None:
        try:
            self.sock.send(message.encode())
        except OSError:
            # The parent is gone; the loop sees that on its next read.
            pass

    def run(self) -> None:
        """Serve until the parent closes the socket and every child has ended."""
        parentGone = False
        later = list(IDLE_PRELOAD)
        while not (parentGone and not self.children):
            watched: list[Any] = (
                [self.wakeRead] if parentGone else [self.sock, self.wakeRead]
            )
            try:
                readable, _, _ = select.select(
                    watched, [], [], IDLE_SECONDS if later else None
                )
            except InterruptedError:
                continue
            if not readable:
                _importQuietly(later.pop(0))
                gc.freeze()
                continue
            if self.wakeRead in readable:
                try:
                    os.read(self.wakeRead, 512)
                except BlockingIOError:
                    pass
            self.reap()
            if self.sock in readable and not parentGone:
                parentGone = not self.serve()

    def serve(self) -> bool:
        """Answer one request; False once the parent has closed the socket."""
        try:
            data, fds = _receiveFds(self.sock, 4096, len(CHILD_FDS))
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        words = data.decode("ascii", "replace").split()
        requestID = words[1] if len(words) > 1 else "?"
        if words[:1] != ["fork"] or len(fds) != len(CHILD_FDS):
            for fd in fds:
                os.close(fd)
            self.send(f"failed {requestID} a malformed request: {words[:1]}")
            return True
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # The child waits until its pid is on the way to the parent, so that
        # the parent hears of it before anything the child sends.
        holdRead, holdWrite = os.pipe()
        try:
            pid = os.fork()
        except OSError as e:
            self.send(f"failed {requestID} fork: {e}")
        else:
            if pid == 0:
                try:
                    self.sock.close()
                    os.close(self.wakeRead)
                    os.close(self.wakeWrite)
                    os.close(holdWrite)
                    os.read(holdRead, 1)
                    os.close(holdRead)
                    _becomeChild(fds, self.pid)
                finally:
                    # Never back into the zygote's loop.
                    os._exit(70)
            self.children.add(pid)
            self.send(f"forked {requestID} {pid}")
        finally:
            os.close(holdRead)
            os.close(holdWrite)
            for fd in fds:
                os.close(fd)
        return True

    def reap(self) -> None:
        """Reap every child that has ended and say so, with its status."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send(f"ended {pid} {status}")


def zygoteMain(fd: int = ZYGOTE_FD) -> None:
    """
    Be a zygote: import what children need (the modules named on the
    command line too), then fork them as the parent on socket C{fd} asks.
    """
    # Ctrl-C reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _dieWithParent()
    except (OSError, AttributeError):
        pass
    sock = _socket.socket(fileno=fd)
    # No collection while importing (nothing to collect yet), and what was
    # imported frozen: a child never scans it, so never touches (copies)
    # the pages it shares with the zygote to do so.
    gc.disable()
    _preload(sys.argv[1:])
    gc.freeze()
    gc.enable()
    code = 0
    try:
        Zygote(sock).run()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        # Not an interpreter's end: that would wait for any thread a
        # preloaded module started (which is no child's, and may never
        # end), and hold the shutdown of the queue that waits for this
        # zygote for as long.
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        finally:
            os._exit(code)
