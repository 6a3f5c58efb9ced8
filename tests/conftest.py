"""The suite's order: unit tests first, so that a fresh failure in pure logic shows within a
minute instead of after the heavy runs. (Config for a test: `rlhf.compose.compose`.)"""

from __future__ import annotations

# Cheapest first; a folder not listed runs last.
ORDER = ("unit", "integration", "e2e", "reliability")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        parts = item.path.relative_to(item.config.rootpath).parts
        folder = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
        return ORDER.index(folder) if folder in ORDER else len(ORDER)

    items.sort(key=rank)  # stable: the order within a folder stays pytest's
