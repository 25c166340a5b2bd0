"""web/timeline.js under node: the ring buffer stays bounded (the oldest rows give way), its
CSV is in the video tool's columns, the chart's window keeps the last seconds only."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from streamfer.video.timeline import columns

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")


def test_the_ring_buffer_keeps_the_newest_rows_in_the_video_tools_columns() -> None:
    script = """
      import { Timeline } from "./web/timeline.js";
      const t = new Timeline(["anger", "happiness"], 2, 3);  // 2 fps x 3 s: 6 rows
      for (let i = 0; i < 10; i += 1) {
        t.add({ anger: 0.25, happiness: 0.75 }, { x: i, y: 2, w: 30.4, h: 30.6 }, 100 + i,
              1000 + 500 * i);
      }
      console.log(JSON.stringify({ length: t.length, capacity: t.capacity, csv: t.toCsv(),
                                   recent: t.recent(1).map((r) => r.frame) }));
    """
    ran = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(ran.stdout)
    assert got["length"] == got["capacity"] == 6
    rows = list(csv.DictReader(io.StringIO(got["csv"])))
    assert list(rows[0]) == columns(["anger", "happiness"])
    assert [int(r["frame"]) for r in rows] == list(range(104, 110))  # the oldest gave way
    assert [float(r["time_s"]) for r in rows] == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    assert rows[0]["x"] == "4" and rows[0]["w"] == "30" and rows[0]["h"] == "31"
    assert rows[0]["top"] == "happiness" and rows[0]["happiness"] == "0.75"
    assert got["recent"] == [107, 108, 109]
