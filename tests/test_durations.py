import pytest

from jobs_cli.durations import (format_duration, parse_duration, parse_positive_duration,
                                parse_seconds)


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90),
    ("15m", 900),
    ("2h", 7200),
    ("1d", 86400),
    ("1h30m", 5400),
    ("1d2h3m4s", 93784),
    ("1.5h", 5400),
    (".5m", 30),
    ("2.m", 120),
    ("500ms", 0.5),
    ("1m500ms", 60.5),
    ("0s", 0),
    (" 10m ", 600),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", " ", "abc", "-5s", "-5", "5x", "5 m", "h", "1h30", "1.2.3s", "1e3s", "nan", "inf",
    "5M", "1h-30m", "9" * 400 + "s",
])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    message = str(raised.value)
    assert message == (
        f"invalid duration {text!r}: use a number with ms, s, m, h or d, e.g. 90s, 15m, 2h")
    assert "\n" not in message


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"),
    (0.4, "0.4s"),
    (0.04, "0s"),
    (0.96, "1s"),
    (45, "45s"),
    (59.6, "1m"),
    (60, "1m"),
    (90, "1m30s"),
    (3600, "1h"),
    (7200, "2h"),
    (7500, "2h5m"),
    (7530, "2h5m"),
    (7230, "2h"),
    (86400, "1d"),
    (3 * 86400 + 4 * 3600 + 59 * 60, "3d4h"),
    (-90, "-1m30s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.3, 1, 59, 61, 3599, 3661, 86399, 90061])
def test_format_output_parses_back(seconds):
    assert parse_duration(format_duration(seconds)) <= seconds + 0.05
    assert parse_duration(format_duration(seconds)) > seconds * 0.95


def test_positive_durations():
    assert parse_positive_duration("1h30m") == 5400
    for bad in ("0s", "soon", "-1h"):
        with pytest.raises(ValueError):
            parse_positive_duration(bad)


def test_durations_beyond_a_century_are_refused():
    assert parse_duration("36500d") == 36500 * 86400
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999d")


@pytest.mark.parametrize("text", ["15", "0.5", " 90 ", ".5"])
def test_a_bare_number_needs_a_unit(text):
    # Seconds to one reader, minutes to another: neither is guessed.
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert str(raised.value) == (f"duration {text!r} needs a unit: add one, "
                                 f"e.g. {text.strip()}s, {text.strip()}m")


@pytest.mark.parametrize("text, seconds", [("30", 30), ("0", 0), ("0.5", 0.5), (" 2 ", 2)])
def test_seconds_variables_are_plain_seconds(text, seconds):
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["30s", "1m", "", "-1", "soon", "nan"])
def test_seconds_variables_refuse_anything_else(text):
    with pytest.raises(ValueError):
        parse_seconds(text)
