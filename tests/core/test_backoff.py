"""Retry timing as values, on a fake clock: backoff, recovery, quiet logging. The handshake pacer
and the recovery bound after an outage (the pacer, backoff and recovery together): test_pacer.py."""

from __future__ import annotations

import random

from gateway.core.backoff import Backoff, Recovery


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, max_s=60.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    bases = [min(60.0, 2.0**n) for n in range(10)]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True))
    assert backoff.capped
    backoff.reset()
    assert not backoff.capped and backoff.next_delay() <= 1.0


def test_backoff_capped_only_once_the_cap_is_given() -> None:
    backoff = Backoff(initial_s=0.05, max_s=60.0, factor=40.0, rng=random.Random(2))
    backoff.next_delay()  # 0.05
    backoff.next_delay()  # 2
    assert not backoff.capped
    assert 30.0 <= backoff.next_delay() <= 60.0
    assert backoff.capped


def test_recovery_probes_only_while_no_link_is_up() -> None:
    recovery = Recovery(probe_every_s=3.0)
    assert recovery.probe_due(10.0, waiting=1, links_up=0)
    recovery.attempt_started(10.0)
    assert not recovery.probe_due(12.0, waiting=1, links_up=0)
    assert recovery.probe_due(13.0, waiting=1, links_up=0)
    assert not recovery.probe_due(13.0, waiting=1, links_up=1)  # the cloud is reachable
    assert not recovery.probe_due(13.0, waiting=0, links_up=0)  # nobody waits


def test_recovery_a_success_after_failures_ends_an_outage() -> None:
    recovery = Recovery(probe_every_s=3.0)
    assert not recovery.connected()  # nothing failed: no one to wake
    recovery.failed()
    recovery.failed()
    assert recovery.connected()
    assert not recovery.connected()
