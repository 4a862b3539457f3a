"""Duplicate detection by (node, seq) agrees with a perfect memory inside its window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dedup import SeqWindow, Verdict

seqs = st.integers(0, 300) | st.integers(0, 2**63 - 1)


@settings(derandomize=True, max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), seqs), max_size=400))
def test_matches_an_unbounded_set_within_the_window(events):
    """Within the window the verdict is exactly what a set of all seen keys says;
    outside it the window admits it cannot tell (and never claims a duplicate)."""
    window = SeqWindow(window=64)
    seen: set[tuple[str, int]] = set()
    highest: dict[str, int] = {}
    for node, seq in events:
        verdict = window.check(node, seq)
        too_old = node in highest and highest[node] - seq >= 64
        if too_old:
            assert verdict is Verdict.TOO_OLD_TO_TELL
        else:
            expected = Verdict.DUPLICATE if (node, seq) in seen else Verdict.NEW
            assert verdict is expected
            seen.add((node, seq))
        highest[node] = max(highest.get(node, seq), seq)


def test_a_huge_jump_in_seq_is_cheap():
    """A valid but hostile seq (2**63 - 1 after 5) costs no more than any other reading:
    the window restarts instead of shifting a bitmap by the jump."""
    window = SeqWindow(window=4096)
    assert window.check("n", 5) is Verdict.NEW
    assert window.check("n", 2**63 - 1) is Verdict.NEW
    assert window.check("n", 2**63 - 1) is Verdict.DUPLICATE
    assert window.check("n", 5) is Verdict.TOO_OLD_TO_TELL


def test_resent_backlog_in_order_is_all_duplicates():
    """A publisher resending its last 100 readings after a reconnect is fully deduplicated."""
    window = SeqWindow()
    assert all(window.check("n", s) is Verdict.NEW for s in range(1000))
    assert all(window.check("n", s) is Verdict.DUPLICATE for s in range(900, 1000))
    assert len(window) == 1
