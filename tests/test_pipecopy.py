"""Copier against real pipes and files: every byte passed on, and the right tail.

The tests write into a source pipe and call copy() themselves, so which bytes make
up a chunk is decided by the test, not by timing.
"""

import fcntl
import os
import struct
import termios
import threading

import pytest

from jobs_cli import pipecopy
from jobs_cli.pipecopy import Copier


@pytest.fixture(params=["zero copy", "read and write"])
def copier_kind(request, monkeypatch):
    """Every test runs with tee and splice, and with the read-and-write fallback."""
    if request.param == "read and write":
        monkeypatch.setattr(pipecopy, "_load_tee", lambda: None)
    return request.param


class Pipe:
    def __init__(self, size=None):
        self.read_fd, self.write_fd = os.pipe()
        if size:
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size)

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pipes():
    made = []

    def make(size=None):
        made.append(Pipe(size))
        return made[-1]

    yield make
    for pipe in made:
        pipe.close()


def chunks(count, size, seed=0):
    return [bytes((seed + i * 7 + j) % 251 for j in range(size)) for i in range(count)]


def read_available(fd):
    os.set_blocking(fd, False)
    out = bytearray()
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def waiting(fd):
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def copy_all(copier, stream, source):
    """copy() until the source pipe is empty, as the wrapper's loop does while it is
    readable: a call passes as much as the tail pipe has room for."""
    assert copier.copy(stream)
    while waiting(source.read_fd):
        assert copier.copy(stream)


def pass_through(copier, stream, source, target, parts):
    """Write each part, copy it on, and read it from the target: what came out."""
    out = bytearray()
    for part in parts:
        os.write(source.write_fd, part)
        copy_all(copier, stream, source)
        out += read_available(target.read_fd)
    return bytes(out)


@pytest.mark.parametrize("tail_bytes", [0, 1, 10, 4096, 10240, 3 << 20])
def test_a_pipe_gets_every_byte_and_the_tail_is_the_last_bytes(copier_kind, pipes, tail_bytes):
    source, target = pipes(1 << 20), pipes(1 << 20)
    parts = chunks(12, 300_000)
    with Copier(tail_bytes) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        out = pass_through(copier, stream, source, target, parts)
        os.close(source.write_fd)
        assert not copier.copy(stream)  # end of file
        everything = b"".join(parts)
        assert out == everything
        assert copier.tail() == everything[len(everything) - tail_bytes:]


def test_a_pipe_is_passed_on_by_tee_where_linux_has_it(pipes, monkeypatch):
    # The "zero copy" runs above would pass through the fallback too: this one
    # fails if the bytes for a pipe do not go through tee(2).
    tee = pipecopy._load_tee()
    if tee is None:
        pytest.skip("no tee(2) here")
    duplicated = []
    monkeypatch.setattr(pipecopy, "_load_tee", lambda: lambda *args: duplicated.append(
        tee(*args)) or duplicated[-1])
    source, target = pipes(1 << 20), pipes(1 << 20)
    with Copier(100) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        out = pass_through(copier, stream, source, target, chunks(3, 200_000))
        assert sum(duplicated) == len(out) == 600_000


def test_many_tiny_chunks_keep_the_whole_tail(copier_kind, pipes):
    # More chunks than the tail pipe has slots, each smaller than a page.
    source, target = pipes(), pipes()
    parts = chunks(2000, 3)
    with Copier(5000) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        out = pass_through(copier, stream, source, target, parts)
        everything = b"".join(parts)
        assert out == everything
        assert copier.tail() == everything[-5000:]


def pipe_sizes(*fds):
    return [fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in fds]


def test_the_pipes_are_enlarged_once_a_mebibyte_has_passed_and_never_shrunk(copier_kind, pipes):
    """Until then they keep their sizes: the user's pipe quota counts sizes (see pipecopy)."""
    source, target = pipes(), pipes()
    default = pipe_sizes(source.write_fd)[0]
    with Copier(100) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        pass_through(copier, stream, source, target, chunks(15, 65_536))
        assert pipe_sizes(source.write_fd, target.write_fd) == [default, default]
        pass_through(copier, stream, source, target, chunks(1, 65_536))
        assert pipe_sizes(source.write_fd, target.write_fd) == [pipecopy.PIPE_SIZE] * 2
    large_source, large_target = pipes(), pipes()
    try:  # larger than an unprivileged process may ask for
        fcntl.fcntl(large_target.write_fd, fcntl.F_SETPIPE_SZ, 2 * pipecopy.PIPE_SIZE)
    except PermissionError:
        return
    with Copier(100) as copier:
        stream = copier.stream(large_source.read_fd, large_target.write_fd, True)
        pass_through(copier, stream, large_source, large_target, chunks(16, 65_536))
        assert pipe_sizes(large_target.write_fd) == [2 * pipecopy.PIPE_SIZE]


def test_a_pipe_that_took_an_ended_streams_number_is_left_alone(copier_kind, pipes):
    ended, source, target = pipes(), pipes(), pipes()
    with Copier(100) as copier:
        done = copier.stream(ended.read_fd, target.write_fd, read_past_broken_target=True)
        os.close(ended.write_fd)
        assert not copier.copy(done)
        os.close(ended.read_fd)
        newcomer = os.pipe()  # the lowest free numbers: the ended stream's
        try:
            stream = copier.stream(source.read_fd, target.write_fd, True)
            pass_through(copier, stream, source, target, chunks(16, 65_536))
            assert pipe_sizes(newcomer[1]) != [pipecopy.PIPE_SIZE]
        finally:
            os.close(newcomer[0])
            os.close(newcomer[1])


def test_a_file_gets_every_byte(copier_kind, pipes, tmp_path):
    source = pipes(1 << 20)
    parts = chunks(5, 100_000)
    with open(tmp_path / "log", "wb") as log, Copier(100) as copier:
        stream = copier.stream(source.read_fd, log.fileno(), read_past_broken_target=True)
        for part in parts:
            os.write(source.write_fd, part)
            copy_all(copier, stream, source)
        assert copier.tail() == parts[-1][-100:]
    assert (tmp_path / "log").read_bytes() == b"".join(parts)


def test_the_tail_keeps_the_order_of_chunks_across_streams(copier_kind, pipes, tmp_path):
    # One stream to a pipe, one to a file: the zero-copy and the copying path share a tail.
    err_source, out_source, err_target = pipes(), pipes(), pipes()
    with open(tmp_path / "out", "wb") as out_file, Copier(1 << 16) as copier:
        streams = {
            "err": (err_source, copier.stream(err_source.read_fd, err_target.write_fd, True)),
            "out": (out_source, copier.stream(out_source.read_fd, out_file.fileno(), False)),
        }
        written = b""
        for index, name in enumerate(["err", "out", "out", "err", "out", "err", "err"]):
            source, stream = streams[name]
            part = f"{name}{index}\n".encode()
            os.write(source.write_fd, part)
            copy_all(copier, stream, source)
            written += part
        assert copier.tail() == written
        assert read_available(err_target.read_fd) == b"err0\nerr3\nerr5\nerr6\n"


def test_a_broken_target_is_dropped_and_read_past_for_the_tail(copier_kind, pipes):
    source, target = pipes(), pipes()
    os.close(target.read_fd)
    with Copier(1000) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        for part in chunks(4, 50_000):
            os.write(source.write_fd, part)
            copy_all(copier, stream, source)
        assert not stream.target_open
        assert copier.tail() == part[-1000:]
        os.close(source.write_fd)
        assert not copier.copy(stream)


def test_a_broken_target_ends_a_stream_not_read_past_it(copier_kind, pipes):
    source, target = pipes(), pipes()
    os.close(target.read_fd)
    with Copier(1000) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=False)
        os.write(source.write_fd, b"lost\n")
        assert not copier.copy(stream)


def test_a_closed_target_fd_is_a_broken_target(copier_kind, pipes):
    source, target = pipes(), pipes()
    with Copier(1000) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        os.close(target.write_fd)
        os.write(source.write_fd, b"still kept\n")
        assert copier.copy(stream)
        assert not stream.target_open
        assert copier.tail() == b"still kept\n"


def test_a_non_blocking_full_target_loses_nothing(copier_kind, pipes):
    # Someone set O_NONBLOCK on the pipe we share: the copy waits for the reader.
    source, target = pipes(1 << 20), pipes()
    parts = chunks(8, 500_000)
    received = bytearray()

    def reader():
        while chunk := os.read(target.read_fd, 1 << 16):
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    with Copier(10) as copier:
        stream = copier.stream(source.read_fd, target.write_fd, read_past_broken_target=True)
        os.set_blocking(target.write_fd, False)
        for part in parts:  # each larger than the target pipe holds at first
            os.write(source.write_fd, part)
            copy_all(copier, stream, source)
        os.close(target.write_fd)
        thread.join()
        data = b"".join(parts)
        assert bytes(received) == data
        assert copier.tail() == data[-10:]
