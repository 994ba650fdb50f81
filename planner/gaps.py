"""Gaps and resets of the events stream, told apart from the normal flow. Pure.

The planner reads the events stream in order from the position it committed. Every sequence after it should
come, one by one: the stream holds only events subjects, and nothing but age or size limits (or an operator)
removes messages. So:
- a gap: the first sequence of a batch is beyond position + 1, or two sequences of a batch are not consecutive —
  those events were removed before the planner read them;
- a reset: the stream's last sequence is below the committed position — the stream was deleted and made again,
  and everything the planner would read next starts over from 1.
Either way the store may miss what the clusters said; the planner asks the watchers to resend everything
(bus/control.py) and says so loudly.
"""

from __future__ import annotations

from collections.abc import Iterable


def gaps(position: int, sequences: Iterable[int]) -> list[tuple[int, int]]:
    """The (first, last) sequence ranges missing between `position` and the sequences read, in order."""
    out: list[tuple[int, int]] = []
    expected = position + 1
    for sequence in sequences:
        if sequence > expected:
            out.append((expected, sequence - 1))
        expected = max(expected, sequence + 1)
    return out


def was_reset(position: int, last_sequence: int) -> bool:
    """The stream ends before what the planner already committed: it was made again."""
    return last_sequence < position
