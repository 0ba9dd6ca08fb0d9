"""pytest support: a session-scoped `LocalStack` fixture built from a SAM template.

In a ``conftest.py`` or test module::

    from squash.local.testing import local_stack_fixture

    local_stack = local_stack_fixture("template.yaml", workers=2, prewarm=["Processor"])

    def test_search(local_stack):
        boto3.client("lambda").invoke(FunctionName="Processor", Payload=b"{}")

The stack starts once per test session (on first use), exports its endpoint variables for the rest of the
session and stops every worker at the end. Worker logs stay in pytest's temporary folder
(``<basetemp>/squash-local*/logs/<function>.log``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from squash.local.stack import LocalStack


def local_stack_fixture(template: str | Path | None = None, **options: Any) -> Callable[..., Any]:
    """A session-scoped fixture yielding a running `LocalStack`; ``options`` go to its constructor."""

    @pytest.fixture(scope="session")
    def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
        scratch = tmp_path_factory.mktemp("squash-local")
        with LocalStack(template, scratch_dir=scratch, **options) as stack:
            yield stack

    return local_stack
