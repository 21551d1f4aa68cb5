"""The table: every figure beside its reference (measured in the same run) and its target."""

from __future__ import annotations

from typing import Any


def _get(r: dict[str, Any], *path: str) -> Any:
    cur: Any = r
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _n(v: Any, unit: str = "/s") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(workload, skiplock, reference, ratio, target, verdict)"""
    out: list[tuple[str, str, str, str, str, str]] = []

    def ratio_row(name: str, ours: Any, ref: Any, ref_name: str, target: float | None, unit: str = "/s",
                  inverse: bool = False) -> None:
        if ours is None or ref is None or not ref:
            out.append((name, _n(ours, unit), f"{ref_name} {_n(ref, unit)}", "n/a",
                        f">= {target:.0%}" if target else "", "not measured"))
            return
        ratio = ours / ref
        if target is None:
            verdict, tgt = "", ""
        elif inverse:
            verdict, tgt = ("met" if ratio <= target else "NOT MET"), f"<= {target:g}x"
        else:
            verdict, tgt = ("met" if ratio >= target else "NOT MET"), (f">= {target:g}x" if target >= 1
                                                                      else f">= {target:.0%}")
        shown = f"{ratio:.2f}x" if (target or 0) >= 1 or inverse or ratio >= 1.5 else f"{ratio:.0%}"
        out.append((name, _n(ours, unit), f"{ref_name} {_n(ref, unit)}", shown, tgt, verdict))

    f = r.get("floor", {})
    out.append(("SQL floor: INSERT 1 row/tx, 1 conn", _n(f.get("insert_one")), "", "", "", ""))
    out.append(("SQL floor: INSERT 1,000 rows/stmt", _n(f.get("insert_batch")), "", "", "", ""))
    out.append(("SQL floor: INSERT 1 row/tx, 32 conns", _n(f.get("insert_32")), "", "", "", ""))
    out.append(("SQL floor: claim+finish LIMIT 100/stmt", _n(f.get("claim_finish")), "", "", "", ""))
    sa = r.get("sql_alone") or {}
    ratio_row("Skiplock's SQL alone: insert_job, 1/tx", sa.get("insert_one"), f.get("insert_one"), "floor", None)
    ratio_row("Skiplock's SQL alone: insert_jobs, 10,000/stmt", sa.get("insert_batch"), f.get("insert_batch"),
              "floor", None)
    ratio_row("Skiplock's SQL alone: claim 200 + ack 200, serial", sa.get("claim_ack"), f.get("claim_finish"),
              "floor", None)
    ratio_row("enqueue, Python, 1 job/tx", _get(r, "enqueue", "one"), f.get("insert_one"), "floor", 0.8)
    ratio_row("enqueue, Python, 1 job/tx vs its SQL alone", _get(r, "enqueue", "one"), sa.get("insert_one"),
              "SQL alone", None)
    ratio_row("enqueue, Python bulk, 10,000/call", _get(r, "enqueue", "bulk"), f.get("insert_batch"), "floor", 0.5)
    ratio_row("enqueue, Python bulk vs its SQL alone", _get(r, "enqueue", "bulk"), sa.get("insert_batch"),
              "SQL alone", None)
    ratio_row("enqueue, HTTP POST /jobs, 32 clients", _get(r, "http", "post_jobs", "rate"), f.get("insert_32"),
              "floor", 0.5)
    ratio_row("enqueue, HTTP POST /jobs/bulk (1,000/req)", _get(r, "http", "post_bulk", "rate"),
              f.get("insert_batch"), "floor", None)
    best = _get(r, "drain", "best")
    drain = best["rate"] if isinstance(best, dict) else None
    label = f"drain, 1 process (c={best['concurrency']})" if isinstance(best, dict) else "drain, 1 process"
    ratio_row(label, drain, f.get("claim_finish"), "floor", 0.4)
    ratio_row("drain, 1 process vs its SQL alone (serial)", drain, sa.get("claim_ack"), "SQL alone", None)
    ratio_row("drain, 2 processes", _get(r, "drain", "two_processes", "rate"), f.get("claim_finish"), "floor", None)
    for system in ("pgqueuer", "procrastinate"):
        peer = _get(r, system, "drain", "best", "rate")
        if peer is not None or system == "pgqueuer":
            ratio_row(f"drain, 1 process vs {system} best", drain, peer, system, 2.0 if system == "pgqueuer" else None)
        for kind, ref_key in (("one", "enqueue_one"), ("bulk", "enqueue_bulk")):
            peer_enq = _get(r, system, "enqueue", ref_key)
            if peer_enq is not None:
                ratio_row(f"enqueue {kind} vs {system}", _get(r, "enqueue", kind), peer_enq, system, None)
    lat = r.get("latency") or {}
    for p, target in (("p50", 2.0), ("p95", None), ("p99", 5.0)):
        v = lat.get(p)
        verdict = "" if target is None or v is None else ("met" if v <= target else "NOT MET")
        out.append((f"pickup latency {p}, idle worker", _n(v, " ms"), "", "", f"<= {target:g} ms" if target else "",
                    verdict))
        for system in ("pgqueuer", "procrastinate"):
            peer = _get(r, system, "latency", p)
            if peer is not None:
                ratio_row(f"pickup latency {p} vs {system}", v, peer, system,
                          0.5 if system == "pgqueuer" and p in ("p50", "p99") else None, unit=" ms", inverse=True)
    b = r.get("backlog") or {}
    ratio_row(f"drain with {b.get('queued_large', 0):,} queued vs {b.get('queued_small', 0):,}",
              b.get("rate_large"), b.get("rate_small"), "small", 0.8)
    qd = r.get("queues") or {}
    ratio_row("drain, 100 queues + mixed priorities vs 1 queue", qd.get("many_queues"), qd.get("one_queue"),
              "1 queue", 0.7)
    m = r.get("memory") or {}
    mx = m.get("max_mb")
    grow = (m.get("last_quarter_mb") or 0) - (m.get("first_quarter_mb") or 0)
    out.append(("worker RSS, c=100, 100,000 jobs", _n(mx, " MB"),
                f"first/last quarter {_n(m.get('first_quarter_mb'), '')}/{_n(m.get('last_quarter_mb'), ' MB')}",
                f"+{grow:.1f} MB", "<= 150 MB, flat",
                "not measured" if mx is None else ("met" if mx <= 150 and grow < 10 else "NOT MET")))
    return out


def table(r: dict[str, Any]) -> str:
    head = ("workload", "skiplock", "reference (same run)", "ratio", "target", "")
    body = rows(r)
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(6)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    m = r.get("machine", {})
    lines.append("")
    lines.append(f"machine: {m.get('cores')} cores {m.get('cpu')}, {m.get('memory_gb')} GB, {m.get('postgres')}, "
                 f"Python {m.get('python')}; load average before: {m.get('load_before')}")
    errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    for system in ("pgqueuer", "procrastinate"):
        for k, v in (r.get(system) or {}).items():
            if isinstance(v, dict) and "error" in v:
                errors[f"{system}.{k}"] = v["error"]
    for k, v in errors.items():
        lines.append(f"FAILED {k}: {v}")
    return "\n".join(lines)
