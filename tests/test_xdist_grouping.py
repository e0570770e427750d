"""The suite's own machinery: under `-n` (the README's test command) a test marked xdist_group runs in its group.

pytest-xdist's `--dist loadgroup` (pyproject addopts) puts a group's tests on one worker by renaming their node
ids `...@group` on the worker; pytest 9.2 made that rename a no-op, and the groups were silently ignored
(pytest-dev/pytest-xdist#1386): the Ray tests then started one Ray per worker and module fixtures were made on
both workers (pyproject pins pytest < 9.2 for it). This test fails where a group is not one."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("grouping-check")
def test_a_grouped_test_runs_in_its_group(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by a pytest-xdist worker under --dist loadgroup (no -n)")
    assert request.node.nodeid.endswith("@grouping-check"), request.node.nodeid
