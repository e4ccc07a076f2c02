"""The idle heap trim (service/daemon/memory_trim.py): once per idle spell, never while busy."""

from __future__ import annotations

from service.daemon.memory_trim import IdleTrim, malloc_trim


def test_trims_once_per_idle_spell_and_never_while_the_service_works() -> None:
    now, work, trims = [0.0], [0], []
    t = IdleTrim(lambda: work[0], idle_s=3.0, trim=lambda: trims.append(now[0]), clock=lambda: now[0])
    for step in range(20):  # busy: work every second
        now[0], work[0] = float(step), step
        assert not t.tick()
    for _ in range(10):  # then quiet for 10 s: one trim, 3 s after the last work
        now[0] += 1.0
        t.tick()
    assert trims == [22.0]
    work[0] += 1  # new work, then quiet again: one more
    for _ in range(5):
        t.tick()
        now[0] += 1.0
    assert len(trims) == 2 and t.status() == {"available": True, "trims": 2, "idle_s": 3.0}


def test_glibc_trim_is_found_here() -> None:
    fn = malloc_trim()
    assert fn is not None, "this machine's C library is glibc"
    assert fn() in (0, 1)
