"""Stop sequences: when a request ends, and what of its output a client is sent."""

from __future__ import annotations

import pytest

from core.errors import InputError
from workers.handles import SamplingParams, StopHold

AB, B, XYZ = (1, 2), (2,), (7, 8, 9)


def test_a_request_stops_on_the_last_token_of_any_stop_sequence() -> None:
    params = SamplingParams(stop=(AB, XYZ))
    assert params.stops_at([5, 1], 2) and params.stops_at([7, 8], 9)
    assert not params.stops_at([5, 3], 2) and not params.stops_at([], 2) and not params.stops_at([8], 9)
    assert not SamplingParams().stops_at([1], 2)


def test_the_text_leaves_out_the_longest_stop_sequence_it_ends_with() -> None:
    params = SamplingParams(stop=(B, AB))
    assert params.without_stop([4, 1, 2]) == [4]  # "ab" starts before "b": the text ends before it
    assert params.without_stop([4, 3, 2]) == [4, 3]
    assert params.without_stop([4, 3]) == [4, 3]


def test_a_stream_holds_back_what_may_begin_a_stop_sequence_and_never_sends_it() -> None:
    hold = StopHold(SamplingParams(stop=(XYZ,)))
    assert hold.push(5) == [5]
    assert hold.push(7) == [] and hold.push(8) == []  # maybe the start of 7 8 9
    assert hold.push(4) == [7, 8, 4]  # it was not
    assert hold.push(7) == [] and hold.push(8) == [] and hold.push(9) == []
    assert hold.end() == []  # the request ended on the stop sequence: nothing of it is sent
    cut = StopHold(SamplingParams(stop=(XYZ,)))
    assert cut.push(7) == [] and cut.end() == [7]  # ended (length) on a prefix: sent at the end


def test_stop_sequences_must_not_be_empty() -> None:
    with pytest.raises(InputError, match="stop"):
        SamplingParams(stop=((),))
