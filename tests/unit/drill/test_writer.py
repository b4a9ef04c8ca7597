"""The drill writer counts only its own acknowledgements, whatever else the host prints."""

from dumont.drill.writer import parse_ack


def test_an_ack_line_is_a_record() -> None:
    record = parse_ack(b"ACK 12 1700000000.250000 vast-1\n")
    assert record is not None
    assert (record.seq, record.at, record.host, record.stamp) == (12, 1700000000.25, "vast-1", "1700000000.250000")
    assert record.content == b"12 1700000000.250000 vast-1\n"


def test_a_banner_or_noise_is_not_a_record() -> None:
    for line in (b"Welcome to vast.ai\n", b"", b"ACK\n", b"ACK x 1.0 h\n", b"ACK 1 nan? h\n",
                 b"ACK 1 1.0 h extra\n", b"\xff\xfe 1 2 3\n", b"1 1700000000.0 vast-1\n"):
        assert parse_ack(line) is None, line
