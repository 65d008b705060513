"""The planning methods' names, apart from the planner, so a command line can offer them
without loading it (`cellctl run` builds the whole parser)."""

from __future__ import annotations

from typing import Final

METHODS: Final = ("fifo", "group", "greedy", "instant", "anytime")
