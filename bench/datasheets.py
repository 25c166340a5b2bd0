"""Write the tables of docs/RESULTS.md and docs/BENCHMARKS.md from the result files.

    python -m bench.datasheets            # rewrite every table between its markers
    python -m bench.datasheets --check    # exit 1 if a committed table differs from its files

Each table sits between ``<!-- datasheet:NAME -->`` and ``<!-- /datasheet:NAME -->`` in one of
the two documents, and is made here from the files under ``bench/results/<machine>/`` (the one
schema of ``streamfer/results.py``). Every table names the files its figures come from, and
each file names its command and commit, so a figure is written once, by what measured it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamfer import results

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = results.ROOT
DOCS = {"results": ROOT / "docs" / "RESULTS.md", "benchmarks": ROOT / "docs" / "BENCHMARKS.md"}

Records = dict[tuple[str, str], dict[str, Any]]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _link(record: dict[str, Any]) -> str:
    mid, name = record["machine"]["id"], record["name"]
    return f"[{mid}/{name}](../bench/results/{mid}/{name}.json)"


def _sources(*recs: dict[str, Any]) -> list[str]:
    """One line per file: where the figures come from, the command and the code that ran."""
    lines = [""]
    for r in recs:
        load = r["machine"].get("loadavg_1m")
        where = r["machine"].get("cpu", "")
        if r["machine"].get("usable_cpus"):
            where += f", {r['machine']['usable_cpus']} CPUs"
        if load is not None:
            where += f", load {load} at start"
        added = r.get("details", {}).get("file_added_in")
        commit = r["commit"] + (
            f" (file added in {added})" if r["commit"] == "unknown" and added else ""
        )
        lines.append(f"- {_link(r)}: `{r['command']}`; commit {commit}; {where}; {r['date'][:10]}")
    return lines


def _table(head: list[str], rows: list[list[Any]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(head) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(marks) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _sheet(table: list[str], note: str, *recs: dict[str, Any]) -> list[str]:
    """`table`, then `note` under it after a blank line, then where its figures come from."""
    return [*table, "", note, *_sources(*recs)]


# --- docs/RESULTS.md ---------------------------------------------------------------------


def _span(lo_hi: list[float]) -> str:
    """A 95% interval of two shares: "64.8% to 76.7%"."""
    return f"{_pct(lo_hi[0])} to {_pct(lo_hi[1])}"


def _points(diff: dict[str, Any]) -> str:
    """A paired difference in points with its 95% interval: "+1.2 (-0.5 to +3.2)"."""
    lo, hi = diff["interval_95"]
    return f"{100 * diff['balanced']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def candidates(rs: Records) -> list[str]:
    """Every candidate judged by bench.candidate, shipped or not, bar by bar."""
    recs = sorted((r for (m, n), r in rs.items() if n.startswith("candidate_")),
                  key=lambda r: (r["date"], r["name"]))
    if not recs:
        return ["No candidate judged yet (`python -m bench.candidate --model FILE`)."]
    bars = [b["figure"] for b in recs[0]["figures"]["bars"]]

    def cell(b: dict[str, Any]) -> str:
        if b["value"] is None:
            return "not measured"
        show = _ms if b["at_most"] else _pct
        return show(b["value"]) if b["met"] else \
            f"**{show(b['value'])}** (bar {show(b['threshold'])})"

    rows = []
    for r in recs:
        f = r["figures"]
        by = {b["figure"]: b for b in f["bars"]}
        rows.append([f"`{f['model']}`", *(cell(by[n]) if n in by else "" for n in bars),
                     _points(f["webfaces_paired_vs_against"]), "yes" if f["ships"] else "no"])
    against = sorted({Path(r["figures"]["against"]).name for r in recs})
    return _sheet(
        _table(["candidate", *bars, f"webfaces minus {', '.join(against)}, points (95%)",
                "ships"], rows, "l" + "r" * (len(bars) + 1) + "l"),
        "Bold: a bar missed (its threshold in brackets); a bar not measured is missed. "
        "Figures as the server runs the candidate by default; the paired column resamples "
        "people, the same draws for both models.",
        *recs)


def people(rs: Records) -> list[str]:
    r = _single(rs, "people_ferplus5")
    d = r["details"]
    models = d["models"]
    first = next(iter(models))

    rows = []
    for name, m in models.items():
        sad = m["classes"].get("sadness", {})
        diff = m.get("minus_first")
        rows.append([f"`{name}`", _pct(m["balanced_by_photo"]), _span(m["balanced_interval_95"]),
                     _pct(m["balanced_mean_over_people"]),
                     _pct(sad["recall_by_photo"]) if sad else "",
                     _pct(sad["recall_mean_over_people"]) if sad else "",
                     _points(diff) if diff else ""])
    per_class = [
        [c, v["photos"], v["people"], _pct(v["largest_share"]),
         "; ".join(f"{p['person']} {p['photos']}: {_pct(p['recall'])}" for p in v["largest"]),
         _pct(v["recall_by_photo"]), _pct(v["recall_mean_over_people"])]
        for c, v in models[first]["classes"].items()]
    boot = d["bootstrap"]
    top = max(len(v["largest"]) for v in models[first]["classes"].values())
    return [
        *_table(["model or path", "balanced, by photo", "95% interval", "balanced, mean over "
                 "people", "sadness, by photo", "sadness, mean over people",
                 f"minus `{first}`, points (95%)"], rows, "lrrrrrr"),
        "",
        *_table(["class", "photos", "people", f"largest {top} people's share",
                 f"they, in `{first}`", "recall by photo", "mean over people"], per_class,
                "lrrrlrr"),
        "",
        f"{d['set']}: {d['photos']:,} photos of {d['people']:,} people (a photo's person is "
        f"its file name less `_<n>`). Intervals: {boot['resamples']:,} bootstrap resamples, "
        f"the unit {boot['unit']}, the same draws for every row (so the last column is a "
        "paired difference).",
        *_sources(r),
    ]


def shipped(rs: Records) -> list[str]:
    """What ships and how accurate it is, as served (int8 on the CPU)."""
    recs = sorted(
        (r for (m, n), r in rs.items() if n.startswith("accuracy_ferplus")),
        key=lambda r: (r["figures"]["model"], r["figures"]["set"], r["name"]),
    )
    rows = [
        [
            f"`{f['model']}`",
            f["set"],
            f"{len(f['classes'])}: {', '.join(f['classes'])}",
            f"{f['images']:,}",
            _pct(f["accuracy"]),
            _pct(f["balanced_accuracy"]),
            _span(f["balanced_interval_95"]) if "balanced_interval_95" in f else "",
            _link(r),
        ]
        for r in recs
        for f in [r["figures"]]
    ]
    out = _table(
        ["model", "set", "classes scored", "images", "accuracy", "balanced",
         "balanced, 95% (people resampled)", "source"],
        rows,
        "llllrrrl",
    )
    protocols = sorted({r["figures"]["set"] + ": " + r["figures"]["protocol"] for r in recs})
    return out + [""] + [f"- {p}" for p in protocols] + _sources(*recs)


def table1(rs: Records) -> list[str]:
    r = rs[("training", "accuracy_table1")]
    rows = [
        [
            x["set"],
            x["classes"],
            x["images"],
            x["lbp_svm"],
            x["paper_net"],
            x["best_variant"],
            x["protocol"],
        ]
        for x in r["figures"]["rows"]
    ]
    out = _table(
        [
            "data set",
            "classes",
            "images",
            "LBP+SVM",
            "CNN: paper net",
            "CNN: best variant",
            "protocol",
        ],
        rows,
        "lllrrll",
    )
    return [*out, "", f"Source: {_link(r)} (one training command per cell in its `details`)."]


def webfaces_e2e(rs: Records) -> list[str]:
    r = _single(rs, "webfaces_e2e")
    f = r["figures"]
    rows = [
        [d, v["photos"], _pct(v["with_face"]), _pct(v["balanced_accuracy"])]
        for d, v in f["detectors"].items()
    ]
    return _sheet(
        _table(["server detector", "photos", "a face found", "balanced accuracy"], rows),
        f"`{f['model']}` on {f['set']}: {f['protocol']}.",
        r,
    )


def page_accuracy(rs: Records) -> list[str]:
    r = _single(rs, "page_accuracy")
    f = r["figures"]
    thread = r["details"]["detector"]["thread"]
    row = [f"{f['detector']} ({thread})", f["photos"], _pct(f["faces_found"]),
           _pct(f["balanced_accuracy"]), *(_pct(v) for v in f["recall"].values())]
    return _sheet(
        _table(["page detector", "photos", "a face found", "balanced accuracy",
                *(f"recall: {c}" for c in f["recall"])], [row]),
        f"`{f['model']}` on {f['set']}: {f['protocol']}.",
        r,
    )


# --- docs/BENCHMARKS.md ------------------------------------------------------------------


def model(rs: Records) -> list[str]:
    rows, recs = [], []
    for (mid, name), r in sorted(rs.items()):
        f = r["figures"]
        if name == "model_cpu" and "int8_ms_per_face" in f:
            for label, key in (
                ("int8 ONNX (served on the CPU)", "int8_ms_per_face"),
                ("TorchScript, frozen + fused", "fused_torchscript_ms_per_face"),
            ):
                rows.append(
                    [
                        mid,
                        label,
                        *(_ms(f[key].get(b, float("nan"))) for b in ("1", "8", "16")),
                        _link(r),
                    ]
                )
        elif name in ("model_cpu", "model_cuda"):
            label = f.get(
                "runtime", "TorchScript on CUDA" if name == "model_cuda" else "TorchScript"
            )
            rows.append(
                [
                    mid,
                    label,
                    *(
                        _ms(f["ms_per_face"][b]) if b in f["ms_per_face"] else "-"
                        for b in ("1", "8", "16")
                    ),
                    _link(r),
                ]
            )
        else:
            continue
        recs.append(r)
    return _sheet(
        _table(["machine", "runtime", "batch 1", "batch 8", "batch 16", "source"], rows, "llrrrl"),
        "Measured by `python -m bench.model runtimes` (int8 and TorchScript side by side, as "
        "served) and `python -m bench.model batches` (TorchScript by batch size; "
        "`--device cuda` on a GPU).",
        *recs,
    )


def server(rs: Records) -> list[str]:
    rows, recs = [], []
    for name in ("server_ramp_crops", "server_ramp_frames"):
        for (mid, n), r in sorted(rs.items()):
            if n != name:
                continue
            f = r["figures"]
            for variant, phones in f["phones"].items():
                rows.append(
                    [mid, f["kind"], variant, phones, _ms(f["p99_ms_at_most"][variant]), _link(r)]
                )
            recs.append(r)
    return _sheet(
        _table(
            ["machine", "phones send", "server", "phones at 15 fps", "p99 ms there", "source"],
            rows,
            "lllrrl",
        ),
        "Phones: the most load-test clients at 15 fps with p99 ≤ 100 ms and ≤ 1% lost, "
        "the load generator on the same cores. Measured by `python -m bench.server ramp` "
        "(`--kind frames` for full frames, `--variant` for each server).",
        *recs,
    )


def server_10x15(rs: Records) -> list[str]:
    r = _single(rs, "server_crops_10x15")
    f = r["figures"]
    rows = [
        [
            f"{f['clients']} x {f['fps']:g} fps {f['kind']}, {f['seconds']:g} s",
            _ms(f["p50_ms"]),
            _ms(f["p99_ms"]),
            f"{f['answered']:,} / {f['sent']:,}",
            _ms(f["server_cpu_ms_per_frame"]),
        ]
    ]
    return _sheet(
        _table(["load", "p50 ms", "p99 ms", "answered", "server CPU ms per frame"], rows),
        "Measured by `python -m bench.server fixed --clients 10 --seconds 20 --only "
        "'crops, mirror (default)' --name server_crops_10x15`.",
        r,
    )


def page_detectors(rs: Records) -> list[str]:
    r = _single(rs, "page_detectors")
    f = r["figures"]
    rows = [
        [d, _pct(v["recall"]), _ms(v["ms_median"]), _ms(v["ms_p90"])]
        for d, v in f["detectors"].items()
    ]
    return _sheet(
        _table(["detector (headless Chromium)", "recall", "ms median", "ms p90"], rows),
        f"{f['photos']} photos in {f['frames']} camera-like frames; {f['package']}.",
        r,
    )


def page_stream(rs: Records) -> list[str]:
    r = _single(rs, "page_stream")
    f = r["figures"]
    rows = [
        [
            f"{f['photos']} photos, {f['seconds_each']:g} s each",
            f"{f['received']:g}",
            _pct(f["crop_share"]),
            f"{f['showing_expression']} of {f['photos']}",
        ]
    ]
    return _table(
        [
            "page in Chromium, fake camera",
            "frames received",
            "sent as crops",
            "showing an expression",
        ],
        rows,
    ) + _sources(r)


def false_faces(rs: Records) -> list[str]:
    r = _single(rs, "false_faces")
    f = r["figures"]
    s, m = f["served"], f["mediapipe_default"]
    rows = [
        [
            "served: threshold + mirror check",
            s["threshold"],
            _pct(s["false_face_rate"]),
            _pct(s["recall"]),
        ],
        [
            "MediaPipe's default threshold + mirror check",
            m["threshold"],
            _pct(m["false_face_rate"]),
            _pct(m["recall"]),
        ],
        ["served threshold alone", s["threshold"], _pct(f["threshold_alone_false_face_rate"]), "-"],
    ]
    return _sheet(
        _table(
            [
                "server's BlazeFace",
                "threshold",
                "face-free images with a face",
                "face photos found",
            ],
            rows,
        ),
        f"{f['face_free_images']} face-free images, {f['face_photos']} face photos; "
        f"rule: {f['rule']}.",
        r,
    )


def hostile_decode(rs: Records) -> list[str]:
    r = _single(rs, "hostile_decode")
    f = r["figures"]
    rows = [
        [
            c,
            _ms(v["p50_ms"]),
            _ms(v["p99_ms"]),
            _pct(v["answered"]),
            ", ".join(f"{k} {n}" for k, n in v["hostile"].items()) or "-",
        ]
        for c, v in f["cases"].items()
    ]
    return _sheet(
        _table(
            [
                "beside one client sending",
                "honest p50 ms",
                "honest p99 ms",
                "answered",
                "its frames answered",
            ],
            rows,
            "lrrrl",
        ),
        f"{f['clients']} honest clients x {f['fps']:g} fps of page crops; the hostile one at "
        f"{f['hostile_fps']:g} fps.",
        r,
    )


def hostile_net(rs: Records) -> list[str]:
    r = _single(rs, "hostile_net")
    f = r["figures"]
    rows = [
        [
            c,
            _ms(v["p99_ms"]),
            f"{v['x_baseline']:.2f}",
            _pct(v["answered"]),
            "yes" if v["meets_target"] else "no",
        ]
        for c, v in f["cases"].items()
    ]
    return _sheet(
        _table(
            [
                "beside one attacker",
                "honest p99 ms",
                "x baseline",
                "answered",
                f"p99 < {f['target_p99_ms']:g} ms, all answered",
            ],
            rows,
            "lrrrl",
        ),
        f"{f['clients']} honest clients x {f['fps']:g} fps of page crops.",
        r,
    )


def video(rs: Records) -> list[str]:
    r = _single(rs, "video_throughput")
    f = r["figures"]
    rows = [
        [run, f"{v['x_real_time']:.1f}x", f"{v['x_real_time_per_cpu_s']:.1f}"]
        for run, v in f["runs"].items()
    ]
    return _table(
        [f"{f['video']}, `{f['model']}` {f['runtime']}", "real time", "video s per CPU s"], rows
    ) + _sources(r)


def lean_install(rs: Records) -> list[str]:
    r = _single(rs, "lean_install")
    b, a = r["figures"]["before"], r["figures"]["after"]
    labels = {
        "venv_mb": "serving venv, MB",
        "install_s": "`pip install` from a warm cache, s",
        "start_to_healthy_s": "start to healthy, s",
        "idle_rss_mb_processes_1": "idle RSS, `--processes 1`, MB",
        "idle_rss_mb_per_serving_process_processes_2": "idle RSS per serving process, "
        "`--processes 2`, MB",
    }
    labels |= {
        "cpu_ms_per_frame_crops": "server CPU per page crop, ms",
        "cpu_ms_per_frame_frames": "server CPU per full frame, ms",
    }
    rows = [[label, _num(b[k]), _num(a[k]), f"{b[k] / a[k]:.2f}x"]
            for k, label in labels.items() if k in a]
    before = r["details"]["before"]
    return _table(["measure", f"`{before}` (torch and OpenCV)", "shipped", "ratio"],
                  rows) + _sources(r)


def training_views(rs: Records) -> list[str]:
    out: list[str] = []
    for machine in sorted(m for m, n in rs if n == "training_views"):
        r = rs[(machine, "training_views")]
        f = r["figures"]
        views = f["views"]
        one = views.get("0", next(iter(views.values())))["batches_per_s"]
        rows = [[f"views, `--workers {w}`", _num(v["batches_per_s"]), "-"]
                for w, v in views.items()]
        rows += [[f"`{n}` training step on {f['device']}", _num(v["steps_per_s"]),
                  v["processes_to_keep_up"]] for n, v in f["nets"].items()]
        if out:
            out.append("")
        out += _table([f"{machine}: batches of 128", "per second",
                       f"processes of views it needs ({_num(one)}/s each)"], rows)
        out += _sources(r)
    return out


def _machine_of(rs: Records, name: str) -> str:
    """The machine a single-machine result was measured on (the first, by id)."""
    return sorted(m for m, n in rs if n == name)[0]


def _single(rs: Records, name: str) -> dict[str, Any]:
    """A single-machine result's record, from the machine `_machine_of` picks."""
    return rs[(_machine_of(rs, name), name)]


TABLES: dict[str, tuple[str, Callable[[Records], list[str]]]] = {
    "shipped": ("results", shipped),
    "table1": ("results", table1),
    "webfaces_e2e": ("results", webfaces_e2e),
    "page_accuracy": ("results", page_accuracy),
    "people": ("results", people),
    "candidates": ("results", candidates),
    "model": ("benchmarks", model),
    "server": ("benchmarks", server),
    "server_10x15": ("benchmarks", server_10x15),
    "page_detectors": ("benchmarks", page_detectors),
    "page_stream": ("benchmarks", page_stream),
    "false_faces": ("benchmarks", false_faces),
    "hostile_decode": ("benchmarks", hostile_decode),
    "hostile_net": ("benchmarks", hostile_net),
    "video": ("benchmarks", video),
    "lean_install": ("benchmarks", lean_install),
    "training_views": ("benchmarks", training_views),
}


def render(text: str, doc: str, rs: Records) -> str:
    """`text` with every table of `doc` between its markers made anew from `rs`."""
    for name, (where, make) in TABLES.items():
        if where != doc:
            continue
        pattern = re.compile(rf"(<!-- datasheet:{name} -->\n).*?(<!-- /datasheet:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{DOCS[doc].name}: no markers for table {name!r}")
        body = "\n".join(make(rs)) + "\n"
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 naming each document whose tables are stale",
    )
    args = ap.parse_args(argv)
    rs = results.read_all(RESULTS_DIR)
    stale = []
    for doc, path in DOCS.items():
        old = path.read_text()
        new = render(old, doc, rs)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {'stale' if args.check else 'rewritten'}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
