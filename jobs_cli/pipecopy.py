"""Pass a child's output on and keep its tail, without the bytes passing through Python.

`jobs-cli run` copies its command's stderr to its own and keeps the last
`--tail-bytes` for the run's record. Read-and-write moves every byte through the
wrapper twice more than `command 2>&1 | cat` does, in a third busy process: 0.35-0.5x
that pipeline's speed on a 2-core machine, however few system calls the loop makes.

Linux can pass the bytes on without anyone copying them:

- tee(2) duplicates what waits in the child's pipe into the *tail pipe*, a private
  pipe, by reference to the same pages;
- splice(2) then moves those bytes out of the child's pipe into the target pipe (the
  wrapper's stderr, when it is a pipe), again by reference;
- the tail pipe is cut back to the last `tail_bytes` by splicing its oldest bytes to
  /dev/null, and read only at the end, or into a RingBuffer when many tiny chunks have
  used up its slots (a pipe holds a page reference per chunk).

So the bytes are copied once into the child's pipe and once out of the target pipe,
as in the plain pipeline. bench/run.py measures it against `2>&1 | cat`.

Once 1 MiB has passed, the pipes are enlarged to 1 MiB where the user's pipe quota
allows (never shrunk): the child's, so that a chunk can be large, the tail pipe, and
the target, which is the caller's, so that a large chunk moves in one call instead
of sixteen with the reader woken for each. A pipe's size changes nothing but how
much it buffers. Not before: the quota (pipe-user-pages-soft, 64 MiB) counts a
pipe's size, not what it holds, and a user over it gets 8 KiB pipes for every
program; a run whose command says little, as most do, keeps the default sizes, so
that many of them at once do not bring a service account there.

Python's `os` has splice but not tee, so tee comes from libc through ctypes, loaded
when the first output arrives (a run that writes nothing never loads it). Where any
of it is missing (not Linux), and for a target that is not a pipe, the bytes are
read and written, into one reused buffer, so with no allocation per chunk: into a
file, splice was measured slower than write (2 GiB into a file on ext4: 4.1 s against
3.1 s), since the bytes are copied into the page cache either way.

A target that breaks (closed, broken pipe) is dropped; a source that must be read
past that (stderr, for the tail) goes on being read, and its bytes go to /dev/null.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
from dataclasses import dataclass, field
from typing import Callable

from .ringbuffer import RingBuffer

# A Linux pipe holds 64 KiB by default; reads as large as the pipe only pay off once
# it is enlarged. 1 MiB is the default pipe-max-size an unprivileged process may ask for.
PIPE_SIZE = 1024 * 1024

_SPLICE_F_NONBLOCK = 2
# The tail pipe is cut back when it holds more than this, not after every chunk:
# a system call less for most chunks, while a chunk still has room to be large.
_CUT_AT = PIPE_SIZE // 2
# Bytes passed on before the pipes are enlarged (see the module docstring).
_ENLARGE_AFTER = PIPE_SIZE

Tee = Callable[[int, int, int], int]


@dataclass
class Stream:
    """A pipe from the child, passed on to one of the wrapper's own fds."""

    source_fd: int
    target_fd: int
    # stderr is read to the end even when the wrapper's stderr is gone, for the tail;
    # captured stdout is not, so that the child sees the broken pipe.
    read_past_broken_target: bool
    target_open: bool = True
    spliceable: bool = field(init=False)  # a pipe, which splice(2) moves into

    def __post_init__(self) -> None:
        try:
            self.spliceable = stat.S_ISFIFO(os.fstat(self.target_fd).st_mode)
        except OSError:
            self.spliceable = False  # closed: the first write says so

    @property
    def wanted(self) -> bool:
        return self.target_open or self.read_past_broken_target


class Copier:
    """Passes chunks of streams on, keeping the last `tail_bytes` of all of them.

    The tail holds the streams' bytes in the order their chunks were passed on.
    """

    def __init__(self, tail_bytes: int) -> None:
        self._ring = RingBuffer(tail_bytes)
        self._tail_bytes = tail_bytes
        self._tee: Tee | None = None
        self._tee_loaded = False
        self._tail_pipe: tuple[int, int] | None = None  # (read end, write end)
        self._held = 0  # bytes in the tail pipe, after those in the ring
        self._null: int | None = None
        self._buffer: memoryview | None = None
        self._streams: list[Stream] = []
        self._passed = 0  # bytes passed on, until the pipes are enlarged

    def stream(self, source_fd: int, target_fd: int, read_past_broken_target: bool) -> Stream:
        """A pipe from the child to pass on to `target_fd`."""
        stream = Stream(source_fd, target_fd, read_past_broken_target)
        self._streams.append(stream)
        return stream

    def copy(self, stream: Stream) -> bool:
        """Pass on what `stream`'s pipe holds, or with tee as much of it as the tail pipe
        has room for; False once it is to be read no more."""
        if stream.spliceable and self._zero_copy():
            count = self._tee_into_tail(stream.source_fd)
            if count is None:
                return True  # nothing there after all
            self._move(stream, count)
        else:
            count = os.readv(stream.source_fd, [self._read_buffer()])
            data = self._read_buffer()[:count]
            self._keep(data)
            _pass_on(stream, data)
        if self._passed < _ENLARGE_AFTER:
            self._passed += count
            if self._passed >= _ENLARGE_AFTER:
                self._enlarge_pipes()
        if count > 0 and stream.wanted:
            return True
        # Its pipe is closed next, and the number reused: not one to enlarge.
        self._streams = [kept for kept in self._streams if kept is not stream]
        return False

    def tail(self) -> bytes:
        self._spill()
        return self._ring.getvalue()

    def close(self) -> None:
        for fd in (*(self._tail_pipe or ()), self._null):
            if fd is not None:
                os.close(fd)
        self._tail_pipe = self._null = None

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- zero copy -----------------------------------------------------------------

    def _zero_copy(self) -> bool:
        if not self._tee_loaded:
            self._tee_loaded = True
            self._tee = _load_tee()
            if self._tee is not None:
                self._tail_pipe = os.pipe()
                if self._passed >= _ENLARGE_AFTER:  # through another stream, into a file
                    _enlarge(self._tail_pipe[1])
        return self._tee is not None

    def _tee_into_tail(self, source_fd: int) -> int | None:
        """Duplicate what waits in `source_fd` into the tail pipe: its size, 0 at end of
        file, None if nothing waits."""
        assert self._tee is not None and self._tail_pipe is not None
        if self._held > _CUT_AT:
            self._cut_tail()  # before the tail pipe's room limits the chunk
        while True:
            try:
                count = self._tee(source_fd, self._tail_pipe[1], PIPE_SIZE)
            except BlockingIOError:
                # The tail pipe is full, or the source is empty.
                if self._held > self._tail_bytes:
                    self._cut_tail()
                elif self._held:
                    self._spill()  # tiny chunks have used up the slots
                else:
                    return None
            else:
                self._held += count
                return count

    def _move(self, stream: Stream, count: int) -> None:
        """Take `count` bytes, already in the tail, out of the source to the target."""
        while count:
            if not stream.target_open:
                if not stream.read_past_broken_target:
                    return  # the source is closed next, and the child sees a broken pipe
                count -= _splice(stream.source_fd, self._null_fd(), count)
                continue
            try:
                count -= _splice(stream.source_fd, stream.target_fd, count)
            except BlockingIOError:
                # Someone set O_NONBLOCK on a pipe we share: wait, drop nothing.
                select.select([], [stream.target_fd], [])
            except OSError:
                stream.target_open = False

    def _cut_tail(self) -> None:
        """Drop from the tail pipe what the ring's size would push out anyway."""
        assert self._tail_pipe is not None
        while self._held > self._tail_bytes:
            self._held -= _splice(self._tail_pipe[0], self._null_fd(),
                                  self._held - self._tail_bytes)

    def _spill(self) -> None:
        """Empty the tail pipe into the ring, which then holds the tail in order."""
        while self._held:
            assert self._tail_pipe is not None
            data = os.read(self._tail_pipe[0], min(self._held, PIPE_SIZE))
            self._ring.write(data)
            self._held -= len(data)

    def _enlarge_pipes(self) -> None:
        for stream in self._streams:
            _enlarge(stream.source_fd)
            if stream.spliceable:
                _enlarge(stream.target_fd)
        if self._tail_pipe is not None:
            _enlarge(self._tail_pipe[1])

    # -- read and write ------------------------------------------------------------

    def _keep(self, data: memoryview) -> None:
        self._spill()  # what the tail pipe holds came first
        self._ring.write(data)

    def _read_buffer(self) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(PIPE_SIZE))
        return self._buffer

    def _null_fd(self) -> int:
        if self._null is None:
            self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        return self._null


def _enlarge(fd: int) -> None:
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:  # the caller's may be larger
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over the user's pipe quota, or not ours to change: any size works


def _pass_on(stream: Stream, data: memoryview) -> None:
    if stream.target_open:
        stream.target_open = write_all(stream.target_fd, data)


def write_all(fd: int, data: bytes | memoryview) -> bool:
    """Write all of `data`; False if `fd` no longer takes output (closed, broken pipe)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            # Someone set O_NONBLOCK on a terminal or pipe we share: wait, drop nothing.
            select.select([], [fd], [])
        except OSError:
            return False
    return True


def _splice(source_fd: int, target_fd: int, count: int) -> int:
    moved = os.splice(source_fd, target_fd, count)
    if not moved:
        # Only this process reads the source and `count` bytes wait there.
        raise OSError(errno.EIO, f"splice moved nothing of {count} waiting bytes")
    return moved


def _load_tee() -> Tee | None:
    """libc's tee(2), never blocking, raising OSError as `os` functions do; None
    where there is no tee or no splice to go with it."""
    if not hasattr(os, "splice"):
        return None
    try:
        import ctypes

        libc_tee = ctypes.CDLL(None, use_errno=True).tee
    except (ImportError, OSError, AttributeError):
        return None
    libc_tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
    libc_tee.restype = ctypes.c_ssize_t

    def tee(source_fd: int, target_fd: int, count: int) -> int:
        while True:
            duplicated = libc_tee(source_fd, target_fd, count, _SPLICE_F_NONBLOCK)
            if duplicated >= 0:
                return duplicated
            code = ctypes.get_errno()
            if code != errno.EINTR:  # a signal's handler ran: try again, as os does
                raise OSError(code, os.strerror(code))

    return tee
