"""A conversation's tree of messages, as plain data: which path is active, who is whose sibling.

Pure functions over (id, parent_id, selected_at) rows, one query's worth for a whole
conversation (Conversation.tree()), so that a page costs the same number of queries
whatever the tree's size. Among siblings (children of one message, or the first messages of
a conversation), the one selected last is on the active path; ties go to the newest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

Row = tuple[int, int | None, dt.datetime]  # id, parent_id, selected_at


@dataclass
class Tree:
    parents: dict[int, int | None] = field(default_factory=dict)
    # Each message's children (None: the conversation's first messages), oldest first.
    children: dict[int | None, list[int]] = field(default_factory=dict)
    selected_at: dict[int, dt.datetime] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Tree:
        tree = cls()
        for row in sorted(rows):
            tree.add(*row)
        return tree

    def add(self, message_id: int, parent_id: int | None, selected_at: dt.datetime) -> None:
        """A message newer than every other (so its siblings stay in order)."""
        self.parents[message_id] = parent_id
        self.children.setdefault(parent_id, []).append(message_id)
        self.selected_at[message_id] = selected_at

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.parents

    def active_child(self, message_id: int | None) -> int | None:
        children = self.children.get(message_id)
        if not children:
            return None
        return max(children, key=lambda child: (self.selected_at[child], child))

    def path_from(self, message_id: int | None) -> list[int]:
        """The active continuation below `message_id` (None: the whole active path)."""
        path = []
        while (child := self.active_child(message_id)) is not None:
            path.append(child)
            message_id = child
        return path

    def path(self) -> list[int]:
        """The active path, first message first."""
        return self.path_from(None)

    def leaf(self) -> int | None:
        """The last message of the active path: what a new message follows."""
        path = self.path()
        return path[-1] if path else None

    def ancestors(self, message_id: int) -> list[int]:
        """The messages from the first one down to `message_id`, inclusive."""
        line = []
        current: int | None = message_id
        while current is not None:
            line.append(current)
            current = self.parents[current]
        return line[::-1]

    def siblings(self, message_id: int) -> list[int]:
        """`message_id` and its siblings, oldest first."""
        return self.children[self.parents[message_id]]
