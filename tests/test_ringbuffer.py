import random

import pytest

from jobs_cli.ringbuffer import RingBuffer, tail_text


def test_empty_buffer():
    ring = RingBuffer(8)
    assert ring.getvalue() == b""
    assert len(ring) == 0


def test_keeps_everything_up_to_capacity():
    ring = RingBuffer(8)
    ring.write(b"abc")
    ring.write(b"defgh")
    assert ring.getvalue() == b"abcdefgh"
    assert len(ring) == 8


def test_keeps_last_bytes_across_wraparound():
    ring = RingBuffer(8)
    for piece in (b"abcde", b"fghij", b"kl"):
        ring.write(piece)
    assert ring.getvalue() == b"efghijkl"
    assert len(ring) == 8


def test_write_longer_than_capacity_keeps_its_end():
    ring = RingBuffer(4)
    ring.write(b"xy")
    ring.write(b"0123456789")
    assert ring.getvalue() == b"6789"


def test_accepts_any_bytes_like_object():
    ring = RingBuffer(6)
    ring.write(bytearray(b"abc"))
    ring.write(memoryview(b"defgh")[1:])
    assert ring.getvalue() == b"bcefgh"


@pytest.mark.parametrize("seed", range(20))
def test_matches_the_end_of_everything_written(seed):
    rng = random.Random(seed)
    capacity = rng.randint(1, 50)
    ring = RingBuffer(capacity)
    written = b""
    for _ in range(rng.randint(0, 40)):
        piece = rng.randbytes(rng.choice([0, 1, rng.randint(0, capacity), rng.randint(0, 3 * capacity)]))
        ring.write(piece)
        written += piece
        assert ring.getvalue() == written[-capacity:]
        assert len(ring) == min(len(written), capacity)


def test_zero_capacity_keeps_nothing():
    ring = RingBuffer(0)
    ring.write(b"")
    ring.write(b"abc")
    assert ring.getvalue() == b""


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError):
        RingBuffer(-1)


def test_tail_text_replaces_bad_utf8_and_nul():
    assert tail_text(b"ok \xff\x00 done\n") == "ok \ufffd\ufffd done\n"


def test_tail_text_accepts_a_cut_multibyte_character_at_the_start():
    cut = "é, fin".encode()[1:]
    assert tail_text(cut) == "\ufffd, fin"


def test_tail_text_keeps_valid_utf8():
    assert tail_text("naïve ✓\n".encode()) == "naïve ✓\n"
