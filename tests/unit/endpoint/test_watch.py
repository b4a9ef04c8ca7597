"""Whether a controller is heard: transitions are reported once, and status says for how long none has been."""

from __future__ import annotations

from dumont.endpoint.watch import Change, ControllerWatch


def test_a_controller_arrives_is_replaced_and_leaves_once() -> None:
    watch = ControllerWatch(started_at=100.0)
    assert watch.summary(105.0) == "no controller for 5 s (none since the endpoint started); serving the saved routes"
    assert watch.deadline() is None

    assert watch.heard(11, now=110.0, wall=0.0, expect_within=10.0) is Change.ARRIVED
    assert watch.heard(11, now=112.0, wall=0.0) is Change.NONE
    assert watch.heard(12, now=114.0, wall=0.0) is Change.REPLACED
    assert watch.deadline() == 124.0
    assert watch.summary(115.0) == "controller 12 heard 1 s ago"

    assert watch.look(124.0) is Change.NONE  # at the deadline it is still present
    assert watch.look(124.5) is Change.LEFT
    assert watch.look(130.0) is Change.NONE  # said once
    assert watch.deadline() is None
    assert watch.summary(156.0) == "no controller for 42 s (last: pid 12); serving the last published routes"

    assert watch.heard(13, now=157.0, wall=0.0) is Change.ARRIVED
    assert watch.expect_within == 10.0  # kept until a controller says otherwise


def test_the_controllers_of_a_fleet_heard_in_turn_are_no_take_over() -> None:
    watch = ControllerWatch(started_at=0.0, expect_within=10.0)
    assert watch.heard(11, now=1.0, wall=0.0) is Change.ARRIVED
    assert watch.heard(12, now=1.5, wall=0.0) is Change.REPLACED  # first heard: said once
    for at in (2.0, 3.0, 4.0, 5.0):
        assert watch.heard(11 if at % 2 else 12, now=at, wall=0.0) is Change.NONE
    assert watch.heard(11, now=30.0, wall=0.0) is Change.NONE  # 12 fell silent; 11 was still heard
    assert watch.heard(12, now=31.0, wall=0.0) is Change.REPLACED  # 12 is back after its silence
