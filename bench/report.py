"""The table: every figure beside its reference (measured in the same run) and its target."""

from __future__ import annotations

from statistics import median
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


ISSUE5_HTTP = 2613.0
"""POST /jobs, 32 clients, in the last run before issue 12 (docs/performance.md of that time):
the issue's "2x today's figure". Another run, on a machine whose speed moves between days."""


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(workload, skiplock, reference, ratio, target, verdict)"""
    out: list[tuple[str, str, str, str, str, str]] = []

    def ratio_row(name: str, ours: Any, ref: Any, ref_name: str, target: float | None, unit: str = "/s",
                  inverse: bool = False, times: bool = False) -> None:
        if ours is None or ref is None or not ref:
            tgt = "" if not target else (f"<= {target:g}x" if inverse else
                                         f">= {target:g}x" if target >= 1 else f">= {target:.0%}")
            out.append((name, _n(ours, unit), f"{ref_name} {_n(ref, unit)}", "n/a", tgt, "not measured"))
            return
        ratio = ours / ref
        if target is None:
            verdict, tgt = "", ""
        elif inverse:
            verdict, tgt = ("met" if ratio <= target else "NOT MET"), f"<= {target:g}x"
        else:
            verdict, tgt = ("met" if ratio >= target else "NOT MET"), (f">= {target:g}x" if target >= 1
                                                                      else f">= {target:.0%}")
        shown = f"{ratio:.2f}x" if (target or 0) >= 1 or inverse or times or ratio >= 1.5 else f"{ratio:.0%}"
        out.append((name, _n(ours, unit), f"{ref_name} {_n(ref, unit)}", shown, tgt, verdict))

    f = r.get("floor", {})
    sa = r.get("sql_alone") or {}
    http = r.get("http") or {}
    lat, lat_floor = r.get("latency") or {}, r.get("latency_floor") or {}
    out.append(("SQL floor: INSERT 1 row/tx, 1 conn", _n(f.get("insert_one")), "", "", "", ""))
    out.append(("SQL floor: INSERT 1,000 rows/stmt", _n(f.get("insert_batch")), "", "", "", ""))
    out.append(("SQL floor: INSERT 1 row/tx, 32 conns", _n(f.get("insert_32")), "", "", "", ""))
    out.append(("SQL floor: claim+finish LIMIT 100/stmt", _n(f.get("claim_finish")), "", "", "", ""))
    out.append(("floor: pickup p50 (durable INSERT+NOTIFY, delivery, claim)", _n(lat_floor.get("p50"), " ms"),
                "", "", "", ""))
    out.append(("floor: empty Starlette POST, same server setup, 32 clients",
                _n(_get(http, "empty_post", "rate")), "", "", "", ""))

    ratio_row("Skiplock's SQL alone: claim 200 + ack 200, serial", sa.get("claim_ack"), f.get("claim_finish"),
              "floor", 0.5)
    ratio_row("Skiplock's SQL alone: insert_job, 1/tx", sa.get("insert_one"), f.get("insert_one"), "floor", 0.9)
    ratio_row("Skiplock's SQL alone: insert_jobs, 10,000/stmt", sa.get("insert_batch"), f.get("insert_batch"),
              "floor", 0.7)
    best = _get(r, "drain", "best")
    drain = best["rate"] if isinstance(best, dict) else None
    label = f"drain, 1 process (c={best['concurrency']})" if isinstance(best, dict) else "drain, 1 process"
    two = _get(r, "drain", "two_processes", "rate")
    ratio_row(f"{label} vs its SQL alone", drain, sa.get("claim_ack"), "SQL alone", 0.85)
    alt = _get(r, "pgqueuer", "drain", "alternating") or {}
    if alt.get("ours"):
        ratio_row(f"drain, 1 process vs PgQueuer best, in turn (medians of {len(alt['ours'])})", median(alt["ours"]),
                  median(alt["theirs"]), "PgQueuer", 2.0)
        ratio_row("drain, 2 processes vs 1 process, in turn", median(alt["ours_two"]), median(alt["ours"]),
                  "1 process", 1.5)
        ratio_row("drain, 2 processes vs PgQueuer 2 processes, in turn", median(alt["ours_two"]),
                  median(alt["theirs_two"]), "PgQueuer", 2.0)
    ratio_row("drain, 1 process vs PgQueuer best (minutes apart)", drain,
              _get(r, "pgqueuer", "drain", "best", "rate"), "PgQueuer", None if alt.get("ours") else 2.0, times=True)
    ratio_row("drain, 2 processes vs 1 process (minutes apart)" if alt.get("ours") else
              "drain, 2 processes vs 1 process", two, drain, "1 process", None if alt.get("ours") else 1.5, times=True)
    ratio_row("drain, 2 processes vs PgQueuer 2 processes (minutes apart)", two,
              _get(r, "pgqueuer", "drain", "two_processes", "rate"), "PgQueuer", None if alt.get("ours") else 2.0,
              times=True)
    ratio_row("enqueue, Python, 1 job/tx vs its SQL alone", _get(r, "enqueue", "one"), sa.get("insert_one"),
              "SQL alone", 0.9)
    ealt = _get(r, "pgqueuer", "enqueue_alternating") or {}
    if ealt.get("ours_one"):
        ratio_row(f"enqueue, Python, 1 job/tx vs PgQueuer, in turn (medians of {len(ealt['ours_one'])})",
                  median(ealt["ours_one"]), median(ealt["theirs_one"]), "PgQueuer", 1.0)
        ratio_row("enqueue, Python bulk vs PgQueuer, in turn", median(ealt["ours_bulk"]),
                  median(ealt["theirs_bulk"]), "PgQueuer", 1.0)
    ratio_row("enqueue, Python, 1 job/tx vs PgQueuer", _get(r, "enqueue", "one"),
              _get(r, "pgqueuer", "enqueue", "enqueue_one"), "PgQueuer", None if ealt.get("ours_one") else 1.0,
              times=True)
    ratio_row("enqueue, Python bulk 10,000/call vs its SQL alone", _get(r, "enqueue", "bulk"),
              sa.get("insert_batch"), "SQL alone", 0.8)
    ratio_row("enqueue, Python bulk vs PgQueuer", _get(r, "enqueue", "bulk"),
              _get(r, "pgqueuer", "enqueue", "enqueue_bulk"), "PgQueuer", None if ealt.get("ours_one") else 1.0,
              times=True)
    ratio_row("HTTP POST /jobs, 32 clients vs empty Starlette POST", _get(http, "post_jobs", "rate"),
              _get(http, "empty_post", "rate"), "empty POST", 0.6)
    ratio_row("HTTP POST /jobs, 32 clients vs issue 5's figure (another run)", _get(http, "post_jobs", "rate"),
              ISSUE5_HTTP, "issue 5", 2.0)
    ratio_row("HTTP POST /jobs/bulk (1,000/req) vs floor", _get(http, "post_bulk", "rate"), f.get("insert_batch"),
              "floor", None)
    ratio_row("pickup latency p50 vs physical floor", lat.get("p50"), lat_floor.get("p50"), "floor", 1.5,
              unit=" ms", inverse=True)
    ratio_row("pickup latency p50 vs PgQueuer", lat.get("p50"), _get(r, "pgqueuer", "latency", "p50"), "PgQueuer",
              1.0, unit=" ms", inverse=True)
    for p in ("p95", "p99"):
        ratio_row(f"pickup latency {p} vs PgQueuer", lat.get(p), _get(r, "pgqueuer", "latency", p), "PgQueuer", None,
                  unit=" ms", inverse=True)
    iso = r.get("isolation") or {}
    n = f"{iso.get('backlog', 0):,}"
    ratio_row(f"claim of 1 job (queue urgent) while {n} wait in queue bulk", iso.get("other_waiting_ms"),
              iso.get("alone_ms"), "nothing else", 2.0, unit=" ms", inverse=True)
    ratio_row(f"same, {n} paused in bulk, worker of urgent", iso.get("other_paused_ms"), iso.get("alone_ms"),
              "nothing else", 2.0, unit=" ms", inverse=True)
    ratio_row(f"same, {n} paused in bulk, worker of every queue", iso.get("other_paused_all_ms"),
              iso.get("alone_all_ms"), "nothing else", 2.0, unit=" ms", inverse=True)
    b = r.get("backlog") or {}
    ratio_row(f"drain with {b.get('queued_large', 0):,} queued vs {b.get('queued_small', 0):,}",
              b.get("rate_large"), b.get("rate_small"), "small", 0.9)
    qd = r.get("queues") or {}
    ratio_row("drain, 100 queues + mixed priorities vs 1 queue", qd.get("many_queues"), qd.get("one_queue"),
              "1 queue", 0.8)
    bd, bs = _get(r, "batches", "drain") or {}, _get(r, "batches", "submit") or {}
    ratio_row(f"drain of a {bd.get('jobs', 0):,}-job batch vs the same jobs without a batch", bd.get("batch"),
              bd.get("plain"), "no batch", 0.8)
    ratio_row(f"submit a {bs.get('jobs', 0):,}-job batch vs {bs.get('jobs', 0):,} jobs in bulk", bs.get("batch"),
              bs.get("plain"), "bulk", 0.8)
    bp = _get(r, "batches", "plain") or {}
    for what, key in (("drain, 1 process", "drain"), ("SQL alone claim+ack", "claim_ack"),
                      ("SQL alone insert_jobs 10,000/stmt", "insert")):
        ratio_row(f"jobs of no batch, {what}: schema with batches vs without", bp.get(f"{key}_with"),
                  bp.get(f"{key}_without"), "without", None)
    fl = r.get("flow") or {}
    ratio_row(f"drain, max_running {fl.get('max_running', '?')} (not binding) vs no limit",
              fl.get("max_running_rate"), fl.get("no_limit"), "no limit", 0.9)
    for kind, ref_key in (("1 job/tx", "enqueue_one"), ("bulk", "enqueue_bulk")):
        ratio_row(f"enqueue {kind} vs Procrastinate", _get(r, "enqueue", "one" if kind == "1 job/tx" else "bulk"),
                  _get(r, "procrastinate", "enqueue", ref_key), "Procrastinate", None, times=True)
    ratio_row("drain, 1 process vs Procrastinate best", drain, _get(r, "procrastinate", "drain", "best", "rate"),
              "Procrastinate", None)
    ratio_row("pickup latency p50 vs Procrastinate", lat.get("p50"), _get(r, "procrastinate", "latency", "p50"),
              "Procrastinate", None, unit=" ms", inverse=True)
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
