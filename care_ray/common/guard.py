"""The test suite's honesty check, kept where the expensive things start. tests/conftest.py sets
CARE_RAY_FAST_TEST to a test's id while a test not marked `slow` runs; starting an engine or a
Ray Train run then fails at once, naming the test, instead of silently making the fast subset
slow. Outside the test suite the variable is never set and this costs one dictionary lookup."""

from __future__ import annotations

import os

FAST_TEST_ENV = "CARE_RAY_FAST_TEST"


def refuse_in_fast_tests(what: str) -> None:
    test = os.environ.get(FAST_TEST_ENV)
    if test:
        raise RuntimeError(
            f"{test} starts {what} but is not marked slow: mark it @pytest.mark.slow"
        )
