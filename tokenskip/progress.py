"""Progress bars for long offline work (generation, data preparation)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar that stays quiet when disabled or when there is nothing to do."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or total == 0, leave=False)
