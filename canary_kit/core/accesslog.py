"""nginx's access log as the kit reads it: one JSON object per request, and before the object of an answer whose
predictions nginx read, a line of those predictions as they are:

    P 5f0c...e1 ["Adelie", "Gentoo"]          the predictions in a live answer (request id, then a JSON array)
    S 5f0c...e1 [0.73]                        the predictions in green's answer to that request's shadow copy
    {"time": ..., "request_id": "5f0c...e1", ...}

The predictions are written apart, unescaped (a batch's array of a thousand classes costs nginx's JSON escaping
more than the rest of the request's logging). A request's two lines are written one after the other by the same
worker, so its prediction line always comes first; other requests' lines may come between. `Joiner` puts each
prediction line into its entry (`predictions`), whatever is read: a whole log, or a file from an offset.
"""

from __future__ import annotations

import json
from collections import OrderedDict

KINDS = {"P": False, "S": True}  # a prediction line's kind: whether it is of a shadow copy's answer
PENDING = 10_000  # prediction lines kept waiting for their entry; past this the oldest are dropped
RECENT = 1000  # lines: a prediction line still waiting this close to the end may see its entry in the next read


class Joiner:
    """Entries from log lines, fed in order, each with the predictions its prediction line carried."""

    def __init__(self) -> None:
        self.pending: OrderedDict[tuple[bool, str], tuple[str, int, int]] = OrderedDict()
        self.lines = 0

    def feed(self, line: str, offset: int = 0) -> dict | None:
        """The entry on this line (None: a prediction line, nginx's own message, or a partial line). `offset`: where
        the line starts in its file, to hold back a read at a prediction line whose entry has not come yet."""
        self.lines += 1
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                return None
            if not isinstance(entry, dict):
                return None
            key = (bool(entry.get("shadow")), str(entry.get("request_id", "")))
            found = self.pending.pop(key, None)
            if found is not None:
                entry["predictions"] = found[0]
            else:  # none read (or a log written before predictions had lines of their own)
                entry.setdefault("predictions", "")
            return entry
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] in KINDS and parts[1]:
            self.pending[(KINDS[parts[0]], parts[1])] = (parts[2].rstrip("\r\n"), offset, self.lines)
            while len(self.pending) > PENDING:
                self.pending.popitem(last=False)
        return None

    def held_back(self) -> int | None:
        """Where the next read should start to give the recent prediction lines still waiting their entries (None:
        none is waiting): the first of them, if it is among the last RECENT lines fed."""
        recent = [offset for _, offset, number in self.pending.values() if number > self.lines - RECENT]
        return min(recent) if recent else None


def parse(text: str) -> list[dict]:
    """The entries of log lines (nginx's own messages and partial lines are skipped), with their predictions."""
    joiner = Joiner()
    return [entry for line in text.split("\n") if (entry := joiner.feed(line)) is not None]
