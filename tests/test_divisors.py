"""llmsim.divisors: the divisors every degree check lists, computed in O(sqrt n), and how a message lists them."""

from __future__ import annotations

from llmsim.divisors import ALLOWED_SHOWN, divisors, listed, shown_divisors


def test_the_divisors_are_computed_not_enumerated() -> None:
    """They equal the brute-force list on small counts and come at once for 10^8 (enumerating hung `plan`)."""
    for n in range(1, 200):
        assert divisors(n) == [d for d in range(1, n + 1) if n % d == 0]
    assert divisors(100_000_000)[:3] == [1, 2, 4] and divisors(100_000_000)[-1] == 100_000_000


def test_a_message_lists_few_values_whole_and_many_with_the_largest_kept() -> None:
    """A short list is shown whole (cp on seq_len 256 lists 128 and 256: the old list stopped at 64 without a
    word); a long one keeps its first values, says more exist, and ends with the two largest."""
    assert shown_divisors(256) == "1, 2, 4, 8, 16, 32, 64, 128, 256"
    assert shown_divisors(8192) == "1, 2, 4, 8, 16, 32, 64, 128, 256, 512, ..., 4096, 8192"
    assert len(divisors(8192)) > ALLOWED_SHOWN
    assert listed([]) == "none" and listed([5]) == "5"
