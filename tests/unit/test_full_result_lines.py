"""The text result of a full-mode `ddmctl migrate`: a line per transfer."""

from __future__ import annotations

from ddmctl.commands.migrate import full_mode_result_lines


def test_full_result_line_per_transfer() -> None:
    extra = {"transfers": [
        {"position": 0, "kind": "image", "name": "app:1.0", "target": "app:1.0",
         "state": "sent", "bytes_done": 3 * 1024 * 1024},
        {"position": 1, "kind": "volume", "name": "data", "target": "data",
         "state": "sending", "bytes_done": 512},
        {"position": 2, "kind": "bind_mount", "name": "/srv/site", "target": "/srv/site-moved",
         "state": "sent", "bytes_done": None},
    ]}

    assert full_mode_result_lines(extra) == [
        "image\tapp:1.0\tapp:1.0\tsent\t3.0 MiB",
        "volume\tdata\tdata\tsending\t512 B",
        "bind_mount\t/srv/site\t/srv/site-moved\tsent\t0 B",
    ]


def test_full_result_no_transfers() -> None:
    assert full_mode_result_lines({}) == []
    assert full_mode_result_lines({"transfers": []}) == []
