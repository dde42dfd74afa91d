"""Keep the last N bytes of a stream in fixed memory.

`jobs-cli run` stores the end of a command's stderr with the run, as runitor does: when
a job fails, its last lines usually say why. A job may write hundreds of megabytes, so
the tail lives in a bytearray of fixed size written in place, with a write index that
wraps around. Memory is bounded by the capacity whatever passes through; each write
copies at most `capacity` bytes, since a write longer than the buffer only needs its
own last `capacity` bytes.
"""

from __future__ import annotations


class RingBuffer:
    """The last `capacity` bytes written to it."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self._buffer = bytearray(capacity)
        self._end = 0  # where the next byte goes
        self._size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        count = len(view)
        capacity = len(self._buffer)
        if count >= capacity:
            self._buffer[:] = view[count - capacity:]
            self._end = 0
        else:
            first = min(count, capacity - self._end)
            self._buffer[self._end:self._end + first] = view[:first]
            self._buffer[:count - first] = view[first:]
            self._end = (self._end + count) % capacity
        self._size = min(capacity, self._size + count)

    def getvalue(self) -> bytes:
        if self._size < len(self._buffer):
            # Not yet wrapped around: the data starts at 0.
            return bytes(self._buffer[:self._size])
        return bytes(self._buffer[self._end:] + self._buffer[:self._end])

    def __len__(self) -> int:
        return self._size


def tail_text(data: bytes) -> str:
    """The tail as text fit for a PostgreSQL text column.

    Output is not always UTF-8, and a tail may start in the middle of a multi-byte
    character: both become U+FFFD rather than an error. NUL becomes U+FFFD as well,
    since PostgreSQL text cannot hold it.
    """
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
