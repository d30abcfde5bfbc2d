"""What the storyboard flow returns: one :class:`StoryboardFilm` per sequence, in a summary."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from kf2v_tasks.batch.results import BatchSummary
from kf2v_tasks.generation.stitch import StitchResult

__all__ = ["StoryboardFilm", "StoryboardSummary"]


class StoryboardFilm(BaseModel):
    """One storyboard's film: its transitions (manifest rows) and how stitching went.

    Example:
        ```python
        from kf2v_flows.storyboard import StoryboardFilm
        film = StoryboardFilm(sequence="day", path="out/day.mp4", rows=[2, 3], status="planned")
        assert film.stitch is None   # set once the clips are stitched
        ```
    """

    sequence: str = Field(description="The sequence name (from keyframes: the film's name).")
    path: str = Field(description="Where the film is (or would be).")
    rows: list[int] = Field(description="Its transitions' manifest rows, in order.")
    status: str = Field(description="made, reused (intact from an earlier run), failed, planned.")
    error: Optional[str] = Field(default=None, description="Why it was not made.")
    stitch: Optional[StitchResult] = None


class StoryboardSummary(BaseModel):
    """What ``generate_storyboard`` did: one film per sequence, and the batch of transitions.

    Example:
        ```python
        import asyncio
        from kf2v_flows.storyboard import generate_storyboard

        summary = asyncio.run(generate_storyboard(["k1.png", "k2.png", "k3.png"], "out/film.mp4"))
        print(summary.headline(), summary.films[0].stitch.frames)
        ```
    """

    films: list[StoryboardFilm] = Field(default_factory=list)
    batch: BatchSummary

    def headline(self) -> str:
        """One line: films made, and the transitions' own headline."""
        made = sum(1 for f in self.films if f.status in ("made", "reused"))
        return f"{made} of {len(self.films)} films made; transitions: {self.batch.headline()}"
