"""The hook debouncer and the hook state machine, on exact synthetic times."""

from appliance.analog.callstate import CallMachine, End, Flash, Missed, Start
from appliance.analog.hook import Debouncer, RingMonitor


def settle(debouncer: Debouncer, edges: list[tuple[float, bool]], until: float) -> list:
    """Feed raw edges, polling as a line thread would; return the settled transitions."""
    out = []
    for t, level in edges:
        if (tr := debouncer.poll(t)) is not None:
            out.append(tr)
        debouncer.edge(t, level)
    for step in range(int(until * 1000)):
        if (tr := debouncer.poll(step / 1000)) is not None:
            out.append(tr)
    return out


def chatter(t: float, level: bool, n: int = 6, step: float = 0.002) -> list[tuple[float, bool]]:
    """A transition to `level` at `t` with `n` bounces, 2 ms apart."""
    return [(t + i * step, level if i % 2 == 0 else not level) for i in range(n)] + [(t + n * step, level)]


def test_chatter_settles_to_one_transition_timed_at_its_first_edge():
    transitions = settle(Debouncer(0.04), chatter(1.0, True), until=2.0)
    assert transitions == [(1.0, True)]


def test_a_glitch_shorter_than_the_settle_time_is_no_transition():
    transitions = settle(Debouncer(0.04), [(1.0, True), (1.01, False)], until=2.0)
    assert transitions == []


def test_settled_until_stops_at_a_pending_edge():
    debouncer = Debouncer(0.04, level=True)
    debouncer.edge(1.0, False)
    assert debouncer.settled_until(1.02) == 1.0
    debouncer.poll(1.05)
    assert debouncer.settled_until(1.05) == 1.05


def machine(**kw) -> CallMachine:
    return CallMachine(flash_max=0.7, has_ring_detector=True, **kw)


def test_ringing_then_off_hook_is_an_incoming_call():
    m = machine()
    m.ring(1.0)
    assert m.hook(5.0, True) == [Start(5.0, "incoming", 1.0)]


def test_off_hook_without_ringing_is_outgoing():
    assert machine().hook(2.0, True) == [Start(2.0, "outgoing", None)]


def test_a_line_without_ring_detector_cannot_tell_the_direction():
    m = CallMachine(flash_max=0.7, has_ring_detector=False)
    assert m.hook(2.0, True) == [Start(2.0, "unknown", None)]


def test_a_short_on_hook_is_a_flash_and_keeps_the_call():
    m = machine()
    m.ring(1.0)
    m.hook(5.0, True)
    assert m.hook(8.0, False) == []
    assert m.tick(8.5) == []
    assert m.hook(8.3, True) == [Flash(8.0, 8.3 - 8.0)]
    assert m.state == "call"
    m.hook(9.0, False)
    assert m.tick(9.71) == [End(9.0)]


def test_a_long_on_hook_ends_the_call_at_the_instant_the_hook_went_down():
    m = machine()
    m.hook(2.0, True)
    m.hook(4.0, False)
    assert m.tick(4.69) == []
    assert m.tick(4.7) == [End(4.0)]
    assert m.hook(6.0, True) == [Start(6.0, "outgoing", None)]


def test_an_off_hook_settling_late_but_starting_after_the_window_splits_the_call():
    m = machine()
    m.hook(2.0, True)
    m.hook(4.0, False)
    assert m.hook(4.8, True) == [End(4.0), Start(4.8, "outgoing", None)]


def test_ringing_that_stops_unanswered_is_a_missed_call():
    m = machine()
    ring = RingMonitor(gap=6.0)
    assert ring.edge(1.0, True)
    m.ring(1.0)
    assert not ring.edge(2.0, False)
    assert not ring.edge(5.0, True)      # next burst of the same ringing
    ring.edge(6.0, False)
    assert ring.ringing(11.9) and not ring.ringing(12.0)
    assert m.ring_over(12.0, ring.last_activity) == [Missed(1.0, 6.0)]
    assert m.state == "idle"


def test_ringing_during_a_call_is_ignored():
    m = machine()
    m.hook(2.0, True)
    assert m.ring(3.0) == [] and m.state == "call"


def test_a_handset_off_hook_at_start_is_a_call_already_in_progress():
    m = machine()
    assert m.already_off_hook(3.0) == [Start(3.0, "unknown", None, in_progress=True)]
    m.hook(5.0, False)
    assert m.hook(5.2, True) == [Flash(5.0, 5.2 - 5.0)]
    m.hook(6.0, False)
    assert m.tick(6.8) == [End(6.0)]
