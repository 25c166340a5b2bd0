"""Figures from a load-test run: one JSON-able summary, a text table, a latency histogram.

The summary is the load test's only output format (the text view and the benchmark scripts
read it), so every figure a reader needs to judge a deployment is in it: what was offered,
what came back, how fast, and where the server says its time went.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from streamfer.loadtest.client import RunLog
from streamfer.protocol import NO_FACE, OK, TIMING_KEYS

MAX_LISTED_MISSING = 20


def percentiles(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    if not values_s:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None, "n": 0}
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2),
            "p99": round(float(p99), 2), "max": round(float(ms.max()), 2),
            "mean": round(float(ms.mean()), 2), "n": int(ms.size)}


def _sum_counters(counters: Iterable[Counter]) -> Counter:
    total: Counter = Counter()
    for c in counters:
        total.update(c)
    return total


def rtts_ms(run: RunLog) -> list[float]:
    """Every answered frame's round trip in ms (for histograms)."""
    return [r * 1000.0 for c in run.clients for r in c.rtt]


def summarize(run: RunLog) -> dict:
    """The run as one JSON-able dict; `failures` lists what breaks the protocol's promises."""
    logs = run.clients
    load = run.load
    statuses = _sum_counters(c.statuses for c in logs)
    dropped = _sum_counters(c.dropped for c in logs)
    reply_errors = _sum_counters(c.errors for c in logs)
    protocol = _sum_counters(c.protocol for c in logs)
    batches = _sum_counters(c.batches for c in logs)
    errors_by_reason = Counter({f"reply: {k}": v for k, v in reply_errors.items()})
    errors_by_reason.update({f"protocol: {k}": v for k, v in protocol.items()})
    errors_by_reason.update(run.connect_errors)
    sent = sum(c.sent for c in logs)
    answered = sum(c.answered for c in logs)
    missing_ids = [f"client {i} frame {fid}" for i, c in enumerate(logs) for fid in c.missing]
    served = statuses[OK] + statuses[NO_FACE]
    server_ms = {}
    for key in TIMING_KEYS:
        values = [v for c in logs for v in c.server_ms[key]]
        server_ms[key] = round(float(np.median(values)), 2) if values else None
    batch_sizes = np.repeat(np.fromiter(batches.keys(), int, len(batches)),
                            np.fromiter(batches.values(), int, len(batches)))
    hello = run.hello or {}
    summary = {
        "url": load.url,
        "clients": load.clients,
        "connected": load.clients - sum(run.connect_errors.values()),
        "fps": load.fps,
        "seconds": load.seconds,
        "kind": "crops" if run.frames.is_crop else "frames",
        "images": run.frames.source,
        "frame_bytes_mean": round(run.frames.mean_bytes),
        "model": hello.get("model"),
        "tta": hello.get("tta"),
        "classes": hello.get("classes"),
        "window": load.window or (hello.get("limits") or {}).get("window"),
        "offered_fps": round(load.clients * load.fps, 2),
        "slots": sum(c.slots for c in logs),
        "sent": sent,
        "answered": answered,
        "missing": len(missing_ids),
        "missing_ids": missing_ids[:MAX_LISTED_MISSING],
        "not_sent_window_full": sum(c.not_sent_window_full for c in logs),
        "not_sent_late": sum(c.not_sent_late for c in logs),
        "reconnects": sum(c.reconnects for c in logs),
        "lost_on_disconnect": sum(c.lost_on_disconnect for c in logs),
        "not_sent_disconnected": sum(c.not_sent_disconnected for c in logs),
        "reconnect_failures": dict(_sum_counters(c.reconnect_failures for c in logs)),
        "ended_by_server": dict(Counter(c.ended_by_server for c in logs if c.ended_by_server)),
        "not_sent_server_closed": sum(c.not_sent_server_closed for c in logs),
        "ok": statuses[OK],
        "no_face": statuses[NO_FACE],
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dict(dropped),
        "errors": sum(errors_by_reason.values()),
        "errors_by_reason": dict(errors_by_reason),
        "throughput_fps": round(answered / load.seconds, 2),
        "results_fps": round(served / load.seconds, 2),
        "rtt_ms": percentiles([r for c in logs for r in c.rtt]),
        "rtt_result_ms": percentiles([r for c in logs for r in c.rtt_ok]),
        "server_ms_median": server_ms,
        "batch": {
            "mean": round(float(batch_sizes.mean()), 2) if batch_sizes.size else None,
            "median": float(np.median(batch_sizes)) if batch_sizes.size else None,
            "max": int(batch_sizes.max()) if batch_sizes.size else None,
            "counts": {str(k): v for k, v in sorted(batches.items())},
        },
    }
    failures = []
    # Frames in flight on a connection that was lost (and opened again: --reconnect) are
    # reported as lost, not missing; every other frame sent must have had its reply.
    unaccounted = sent - answered - summary["lost_on_disconnect"]
    if unaccounted or missing_ids:
        failures.append(f"{unaccounted} of {sent} frames got no reply within "
                        f"{load.grace:g} s of the end")
    if run.connect_errors:
        failed = sum(run.connect_errors.values())
        failures.append(f"{failed} of {load.clients} connections failed"
                        + (" (is a server running at this URL?)" if failed == load.clients
                           else ""))
    ended = summary["ended_by_server"]
    if ended:
        how = " and ".join(
            {"closing": f"{n} with its shutdown notice", "lost": f"{n} without notice"}[k]
            for k, n in sorted(ended.items()))
        failures.append(f"the server closed {sum(ended.values())} of {summary['connected']} "
                        f"connections before the run's end ({how}), so "
                        f"{summary['not_sent_server_closed']} of {summary['slots']} frame "
                        "slots were never sent")
    if reply_errors:
        failures.append(f"{sum(reply_errors.values())} error replies")
    if protocol:
        failures.append(f"{sum(protocol.values())} protocol violations")
    summary["failures"] = failures
    summary["passed"] = not failures
    return summary


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def format_summary(s: Mapping) -> str:
    """A human-readable block for one run."""
    rtt, res, srv, batch = s["rtt_ms"], s["rtt_result_ms"], s["server_ms_median"], s["batch"]
    if not s["connected"]:  # nothing was measured: say why, not a table of empty figures
        return "\n".join([f"{s['url']}  no connection", *(
            f"ERROR     {count} x {reason}" for reason, count in
            sorted(s["errors_by_reason"].items())), "FAILED: " + "; ".join(s["failures"])])
    lines = [
        f"{s['url']}  model {s['model']} tta {s['tta']}  window {s['window']}",
        f"load      {s['clients']} clients ({s['connected']} connected) x {s['fps']:g} fps for "
        f"{s['seconds']:g} s, {s['kind']} (~{s['frame_bytes_mean']} B) from {s['images']}",
        f"frames    {s['slots']} slots, {s['sent']} sent, {s['answered']} answered, "
        f"{s['missing']} missing; not sent: {s['not_sent_window_full']} (window full), "
        f"{s['not_sent_late']} (client late)"
        + (f", {s['not_sent_disconnected']} (reconnecting)" if s.get("reconnects") else "")
        + (f", {s['not_sent_server_closed']} (server closed)"
           if s.get("not_sent_server_closed") else ""),
        f"replies   {s['ok']} ok, {s['no_face']} no_face, {s['dropped']} dropped"
        + (f" {s['dropped_by_reason']}" if s["dropped_by_reason"] else "")
        + f", {s['errors']} errors",
        f"rate      {s['throughput_fps']:g} replies/s, {s['results_fps']:g} results/s "
        f"(offered {s['offered_fps']:g} frames/s)",
        f"rtt ms    p50 {_fmt(rtt['p50'])}  p90 {_fmt(rtt['p90'])}  p99 {_fmt(rtt['p99'])}  "
        f"max {_fmt(rtt['max'])}  (all {rtt['n']} replies)",
        f"          p50 {_fmt(res['p50'])}  p90 {_fmt(res['p90'])}  p99 {_fmt(res['p99'])}  "
        f"max {_fmt(res['max'])}  (ok/no_face only)",
        f"server ms median: decode {_fmt(srv['decode'])}  queue {_fmt(srv['queue'])}  "
        f"inference {_fmt(srv['inference'])}  total {_fmt(srv['total'])}",
        f"batch     mean {_fmt(batch['mean'])}  median {_fmt(batch['median'])}  "
        f"max {_fmt(batch['max'])}  sizes {batch['counts']}",
    ]
    if s.get("reconnects") or s.get("lost_on_disconnect"):
        lines.append(f"reconnect {s['reconnects']} reconnects; {s['lost_on_disconnect']} frames "
                     "in flight on lost connections (reported lost, not missing)"
                     + (f"; failed attempts {s['reconnect_failures']}"
                        if s["reconnect_failures"] else ""))
    if s.get("client_cpu") is not None:
        lines.append(f"client    {s['client_cpu']:g} CPU s per s in the load generator "
                     "(near 1: the client, not the server, limits the figures)")
    for reason, count in sorted(s["errors_by_reason"].items()):
        lines.append(f"ERROR     {count} x {reason}")
    if s["missing"]:
        more = s["missing"] - len(s["missing_ids"])
        lines.append("MISSING   " + ", ".join(s["missing_ids"]) +
                     (f" and {more} more" if more > 0 else ""))
    if s["failures"]:
        lines.append("FAILED: " + "; ".join(s["failures"]))
    elif "target_ms" in s:
        lines.append(f"PASSED: every frame sent got exactly one reply, p99 "
                     f"{_fmt(rtt['p99'])} ms <= --target-ms {s['target_ms']:g}, "
                     f"{100 * s['loss']:.1f}% lost <= --max-loss {100 * s['max_loss']:g}%")
    else:
        lines.append("PASSED: every frame sent got exactly one reply")
    return "\n".join(lines)


def save_histogram(path: Path, series: Mapping[str, Sequence[float]], title: str,
                   target_ms: float | None = None) -> Path:
    """Latency histogram PNG of one or more series of round trips in ms, p50/p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    every = [v for values in series.values() for v in values]
    top = float(np.percentile(every, 99.9)) * 1.1 if every else 1.0
    bins = np.linspace(0.0, max(top, 1.0), 60)
    for label, values in series.items():
        if not values:
            continue
        p50, p99 = np.percentile(values, [50, 99])
        line = ax.hist(np.clip(values, 0, bins[-1]), bins=bins, alpha=0.55,
                       label=f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms (n={len(values)})")
        color = line[2][0].get_facecolor()
        ax.axvline(p99, color=color, linestyle="--", linewidth=1)
    if target_ms is not None and target_ms <= bins[-1]:
        ax.axvline(target_ms, color="red", linewidth=1, label=f"target {target_ms:g} ms")
    elif target_ms is not None:
        title += f" (target {target_ms:g} ms is past the right edge)"
    ax.set_xlabel("round trip per frame, ms (values past the right edge are clipped)")
    ax.set_ylabel("frames")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
