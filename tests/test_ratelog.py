"""The per-peer rate-limited log: a few lines per window per key, then a count of what was left out."""

from __future__ import annotations

import logging

from pi_agent.ratelog import RateLimitedLog


def test_each_key_gets_a_burst_per_window_and_hears_how_many_were_left_out(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("ratelog-test"), interval=10.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ratelog-test"):
        written = [limited.warning("peer-a", "bad message %d", i) for i in range(100)]
        assert written[:3] == [True] * 3 and not any(written[3:])
        assert limited.warning("peer-b", "bad message from b")  # another peer has its own window
        now[0] = 10.5
        assert limited.warning("peer-a", "bad message again")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert "held back" in lines[2]
    assert lines[4] == "bad message again [97 similar line(s) were left out]"
    assert limited.suppressed == 97
