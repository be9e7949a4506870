"""nginx's access log as the kit reads it (canary_kit/core/accesslog.py): each prediction line joined to the entry that
follows it, whatever comes between, shadow answers apart from live ones, and nothing misread."""

from __future__ import annotations

import json

from canary_kit.core import accesslog

A, B = "a" * 32, "b" * 32


def line(rid: str, shadow: bool = False, **more) -> str:
    return json.dumps({"request_id": rid, "shadow": shadow, "status": 200, **more}, separators=(",", ":"))


def test_each_prediction_line_goes_to_its_own_entry_live_and_shadow_apart():
    text = "\n".join(
        [
            f'P {A} ["Adelie", "Gentoo"]',
            f"P {B} [0.5]",
            f"S {A} [1, 2]",
            line(B),  # another request's entry first
            "2026/12/07 05:00:00 [warn] 12#12: an nginx message",
            line(A, shadow=True),
            line(A),
            line("c" * 32),  # no predictions read
            '{"request_id": "cut sh',  # a line cut short
            "",
        ]
    )
    entries = accesslog.parse(text)
    got = [(e["request_id"][:1], e["shadow"], e["predictions"]) for e in entries]
    print(f"\nentries: {got}")
    assert got == [("b", False, "[0.5]"), ("a", True, "[1, 2]"), ("a", False, '["Adelie", "Gentoo"]'), ("c", False, "")]


def test_a_prediction_line_waiting_for_its_entry_is_where_the_next_read_starts():
    joiner = accesslog.Joiner()
    assert joiner.feed(line(B), 0) is not None
    assert joiner.feed(f"P {A} [1]", 100) is None
    assert joiner.held_back() == 100  # its entry is not written yet: read again from it
    assert joiner.feed(line(A), 120)["predictions"] == "[1]"
    assert joiner.held_back() is None
    joiner.feed(f"P {B} [2]", 200)  # an entry that never comes (a line lost) holds nothing back for long
    for number in range(accesslog.RECENT):
        joiner.feed(line(f"{number:032x}"), 300 + number)
    assert joiner.held_back() is None


def test_lines_not_in_the_kits_forms_are_never_read_as_predictions():
    for text in (f"P {A}[1]", f"P  {A} [1]", f"X {A} [1]", f"P {A[:31]} [1]", "P"):
        joiner = accesslog.Joiner()
        assert joiner.feed(text) is None
        assert joiner.feed(line(A))["predictions"] == "", text
