"""Event frames of `dashboard.v2`: several events in one `{"type":"batch","events":[…]}` frame.

The hub collects the events of one project published during one loop tick and calls `frames_for(events)`:
the events are serialised once into shared `Frame`s (a lone event stays a plain event frame) that every
subscriber at the same position receives as the same string. An outbox whose client is behind merges
further live frames into its queued tail (`Merge`), so a backlog drains in fewer, larger frames.
Both are bounded by `MAX_EVENTS` events and `MAX_CHARS` characters of JSON text per frame, and a change's
events (`opens_change`) are never split across two frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..bus import Event

MAX_EVENTS = 100
MAX_CHARS = 64 * 1024
_HEAD = '{"type":"batch","events":['
_TAIL = "]}"
_OVERHEAD = len(_HEAD) + len(_TAIL)

# Every change of backend/changes.py publishes one of these, then `project.updated`, which ends it.
CHANGE_OPENERS = frozenset({"story.status.changed", "story.created", "escalation.created", "escalation.resolved"})


def opens_change(event: Event) -> bool:
    """True when `event` is the first of a change whose closing `project.updated` is still to come."""
    return event.event_type in CHANGE_OPENERS


def render(parts: Sequence[str]) -> str:
    """The wire text for these event frames: the event itself when alone, else one batch frame."""
    if len(parts) == 1:
        return parts[0]
    return _HEAD + ",".join(parts) + _TAIL


def size_of(parts: Sequence[str], chars: int) -> int:
    """`len(render(parts))` without rendering, given `chars` = the summed length of `parts`."""
    return chars if len(parts) == 1 else chars + len(parts) - 1 + _OVERHEAD


class Frame:
    """Events of one project rendered once (`text`) and shared by every subscriber that needs exactly them.
    `epoch` is None when the events span two epochs; `first_seq`/`last_seq` bound their seqs."""

    __slots__ = ("text", "parts", "size", "epoch", "first_seq", "last_seq")

    def __init__(self, events: Sequence[Event]) -> None:
        parts = tuple(event.frame for event in events)
        self.parts = parts
        self.text = render(parts)
        self.size = len(self.text)
        epoch = events[0].epoch
        self.epoch: str | None = epoch if all(event.epoch == epoch for event in events) else None
        self.first_seq = events[0].seq
        self.last_seq = events[-1].seq

    def __len__(self) -> int:
        return len(self.parts)


class Merge:
    """An outbox's own tail frame that later live frames are merged into; rendered when it is sent."""

    __slots__ = ("parts", "chars")

    def __init__(self, parts: Iterable[str], chars: int) -> None:
        self.parts = list(parts)
        self.chars = chars

    @property
    def size(self) -> int:
        return size_of(self.parts, self.chars)

    @property
    def text(self) -> str:
        return render(self.parts)

    def fits(self, frame: Frame | Merge) -> bool:
        return len(self.parts) + len(frame.parts) <= MAX_EVENTS and self.size + frame.size + 1 <= MAX_CHARS

    def add(self, frame: Frame | Merge) -> None:
        self.parts.extend(frame.parts)
        self.chars += sum(len(part) for part in frame.parts)


def merged(tail: Frame | Merge, frame: Frame) -> Merge | None:
    """`tail` with `frame` appended (a new `Merge` if `tail` is shared), or None if that would exceed a bound."""
    if isinstance(tail, Merge):
        if not tail.fits(frame):
            return None
        tail.add(frame)
        return tail
    merge = Merge(tail.parts, sum(len(part) for part in tail.parts))
    if not merge.fits(frame):
        return None
    merge.add(frame)
    return merge


def frames_for(events: Sequence[Event]) -> list[Frame]:
    """Split `events` (in order) into frames of at most `MAX_EVENTS` events and `MAX_CHARS` characters, cutting
    only between changes (a change's opening event moves to the next frame with its closing one). A change
    larger than the character bound still gets a frame of its own."""
    frames: list[Frame] = []
    start = count = chars = 0
    last = len(events) - 1
    for i, event in enumerate(events):
        size = len(event.frame) + 1
        need, room = 1, size
        if i < last and opens_change(event):  # reserve room for the change's closing event too
            need, room = 2, size + len(events[i + 1].frame) + 1
        if count and not opens_change(events[i - 1]) and (
            count + need > MAX_EVENTS or chars + room + _OVERHEAD > MAX_CHARS
        ):
            frames.append(Frame(events[start:i]))
            start, count, chars = i, 0, 0
        count += 1
        chars += size
    if start <= last:
        frames.append(Frame(events[start:]))
    return frames
