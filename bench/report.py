"""The markdown summary of a results directory, and the sanity checks of ``--check``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.05
# Issue 19's targets.
TARGET_OVERHEAD = 0.9
TARGET_RSS_MB = 400
TARGET_ACCEPT_S = 2.0
TARGET_GET_P99_MS = 50.0
TARGET_GOODPUT = 0.95
TARGET_429 = 0.03
# Issue 19's makespan targets, per graph and upstream: the next job within 3 % of the ideal
# ready-queue replay of its own busy times, the first job within 10 % of the next.
TARGET_NEXT_OVER_IDEAL = 1.03
TARGET_FIRST_OVER_NEXT = 1.10


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def _get_job_cell(result: dict[str, Any]) -> str:
    get = result.get("get_job")
    if not get or get.get("p99_ms") is None:
        return "-"
    return f"{get['p50_ms']:.0f} / {get['p99_ms']:.0f} {_mark(get['p99_ms'] <= TARGET_GET_P99_MS)}"


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _timed_out(run: dict[str, Any] | None) -> bool:
    return bool(run and run.get("extra", {}).get("timed_out"))


def makespan_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 19's makespan comparisons per (upstream, graph), from the scenario's runs. The
    ratios are makespan ÷ that run's lower bound ("ideal": the warm run's ideal replay ÷
    its bound); a comparison whose runs are missing is None. A LangGraph run cut by its time
    box has no ratio; the next job is below it when it finished before the time box did."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for run in runs:
        key = (run.get("upstream", "simulator"), run["graph"])
        groups.setdefault(key, {})[run["strategy"]] = run
    out: list[dict[str, Any]] = []
    for (upstream, graph), by in groups.items():
        cold, warm = by.get("service-cold"), by.get("service-warm")
        waves, lg = by.get("waves"), by.get("langgraph")
        lg_cut = _timed_out(lg)

        def ratio(run: dict[str, Any] | None) -> float | None:
            return None if run is None else float(run["ratio"])

        ideal = (
            None
            if warm is None
            else round(warm["ideal_ready_queue_s"] / warm["lower_bound"]["value_s"], 4)
        )
        below_lg: bool | None = None
        if warm is not None and lg is not None:
            below_lg = (
                warm["makespan_s"] < lg["makespan_s"] if lg_cut else warm["ratio"] < lg["ratio"]
            )
        out.append(
            {
                "upstream": upstream,
                "graph": graph,
                "agents": next(iter(by.values()))["agents"],
                "ratios": {
                    "service_first": ratio(cold),
                    "service_next": ratio(warm),
                    "waves": ratio(waves),
                    "langgraph": None if lg_cut else ratio(lg),
                    "ideal": ideal,
                },
                "langgraph_timed_out": lg_cut,
                "next_below_waves": None
                if warm is None or waves is None
                else warm["ratio"] < waves["ratio"],
                "next_below_langgraph": below_lg,
                "next_within_3pct_of_ideal": None
                if warm is None
                else warm["ratio_to_ideal"] <= TARGET_NEXT_OVER_IDEAL,
                "first_within_10pct_of_next": None
                if cold is None or warm is None
                else cold["ratio"] <= TARGET_FIRST_OVER_NEXT * warm["ratio"],
            }
        )
    return out


def _bool_cell(value: bool | None) -> str:
    return "-" if value is None else _mark(value)


def _makespan_section(r: dict[str, Any]) -> list[str]:
    low, high = r["latency_ms"]
    order = ("service-cold", "service-warm", "waves", "langgraph", "seed")
    by_graph: dict[tuple[str, str], dict[str, Any]] = {}
    for run in r["runs"]:
        where = (run.get("upstream", "simulator"), run["graph"])
        by_graph.setdefault(where, {"agents": run["agents"]})[run["strategy"]] = run
    lines = [
        f"## Makespan ÷ lower bound (latency uniform {low}-{high} ms, concurrency "
        f"{r['concurrency']}; target ≤ {TARGET_RATIO} for the service)",
        "",
        "Each cell: makespan in s (÷ the lower bound / ÷ an ideal zero-overhead "
        "ready-queue schedule, both computed from that run's own upstream busy times). "
        "Cold: the service's first job (its adaptive limit starts at 16); warm: its next "
        "job. Upstreams: the simulator, and stdlib (bench/stdlib_upstream.py, sharing no "
        "code with it).",
        "",
        "| upstream | graph | agents | bound s | service cold | service warm | waves | "
        "langgraph | seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (upstream, graph), runs in by_graph.items():
        first = next(runs[k] for k in order if k in runs)
        cells = []
        for key in order:
            run = runs.get(key)
            if run is None:
                cells.append("-")
                continue
            if _timed_out(run):
                cells.append(
                    f"> {run['extra']['time_box_s']:.0f} (timed out, "
                    f"{run['completed']} of {run['agents']} done)"
                )
                continue
            ok = run["ratio"] <= TARGET_RATIO
            mark = f" {_mark(ok)}" if key.startswith("service") else ""
            failed = f", {run['failed']} failed" if run["failed"] else ""
            ideal = run.get("ratio_to_ideal")
            ideal_s = f" / {ideal:.3f}" if ideal is not None else ""
            cells.append(f"{run['makespan_s']:.2f} ({run['ratio']:.3f}{mark}{ideal_s}{failed})")
        lines.append(
            f"| {upstream} | {graph} | {runs['agents']} | "
            f"{first['lower_bound']['value_s']:.2f} | " + " | ".join(cells) + " |"
        )
    targets = r.get("targets") or makespan_targets(r["runs"])
    lines += [
        "",
        "### Issue 19's makespan targets",
        "",
        "Ratios: makespan ÷ that run's lower bound; ideal: the next job's ideal replay ÷ its "
        "bound. Targets: the next job below waves and LangGraph, within "
        f"{TARGET_NEXT_OVER_IDEAL - 1:.0%} of its ideal replay, the first job within "
        f"{TARGET_FIRST_OVER_NEXT - 1:.0%} of the next.",
        "",
        "| upstream | graph | agents | first | next | waves | langgraph | ideal | "
        "next < waves | next < langgraph | next within 3 % of ideal | first within 10 % of next |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        ra = t["ratios"]
        lg = "timed out" if t["langgraph_timed_out"] else _f(ra["langgraph"], 3)
        lines.append(
            f"| {t['upstream']} | {t['graph']} | {t['agents']} | {_f(ra['service_first'], 3)} "
            f"| {_f(ra['service_next'], 3)} | {_f(ra['waves'], 3)} | {lg} | "
            f"{_f(ra['ideal'], 3)} | {_bool_cell(t['next_below_waves'])} | "
            f"{_bool_cell(t['next_below_langgraph'])} | "
            f"{_bool_cell(t['next_within_3pct_of_ideal'])} | "
            f"{_bool_cell(t['first_within_10pct_of_next'])} |"
        )
    lines.append("")
    return lines


def summary(out: Path) -> str:
    lines: list[str] = []
    loaded = {
        n: _load(out, n)
        for n in ("makespan", "overhead", "scale", "rate_limits", "api_load", "map")
    }
    first = next((d for d in loaded.values() if d is not None), None)
    if first is None:
        return "No results.\n"
    m = first["machine"]
    lines += [
        "# Benchmark results" + (" (quick)" if first.get("quick") else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}. Client, service and simulator share these cores (loopback).",
        "",
        "| scenario | date | commit | elapsed |",
        "|---|---|---|---|",
    ]
    for name, data in loaded.items():
        if data is not None:
            sha = data["commit"]["sha"] + (" (app/ dirty)" if data["commit"]["app_dirty"] else "")
            lines.append(f"| {name} | {data['date']} | {sha} | {data['elapsed_s']} s |")
    lines.append("")

    data = loaded["makespan"]
    if data is not None:
        lines += _makespan_section(data["result"])

    data = loaded["overhead"]
    if data is not None:
        r = data["result"]
        lines += [
            f"## Overhead: {r['agents']}-agent fan-out, zero-latency simulator, concurrency "
            f"{r['concurrency']} (target service ÷ bare ≥ {TARGET_OVERHEAD})",
            "",
            "| transport | service agents/s | service CPU ms/agent | bare calls/s | "
            "bare CPU ms/call | service ÷ bare |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["transports"]:
            sv, bare, ratio = row["service"], row["bare"], row["service_over_bare"]
            lines.append(
                f"| {row['transport']} | {sv['agents_per_s']:.0f} | {sv['cpu_ms_per_agent']:.3f} "
                f"| {bare['calls_per_s']:.0f} | {bare['cpu_ms_per_call']:.3f} | "
                f"{ratio:.3f} {_mark(ratio >= TARGET_OVERHEAD)} |"
            )
        lines.append("")

    data = loaded["scale"]
    if data is not None:
        r = data["result"]
        lines += [
            f"## Scale: one {r['agents']:,}-agent job, zero-latency simulator "
            f"(targets: accepted in ≤ {TARGET_ACCEPT_S:.0f} s, peak RSS ≤ {TARGET_RSS_MB} MB, "
            f"GET /jobs/{{id}} p99 ≤ {TARGET_GET_P99_MS:.0f} ms)",
            "",
            "| body MB | accept s | completed | makespan s | agents/s | CPU ms/agent | "
            "RSS idle MB | peak RSS MB | GET /jobs/{id} p50 / p99 ms while it runs |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {r['body_mb']} | {r['accept_s']:.2f} "
            f"{_mark(r['accept_s'] <= TARGET_ACCEPT_S)} | {r['counts']['completed']:,} | "
            f"{r['makespan_s']:.1f} | {r['agents_per_s']:.0f} | {r['cpu_ms_per_agent']:.3f} | "
            f"{r['rss_idle_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"{_mark(r['peak_rss_mb'] <= TARGET_RSS_MB)} | {_get_job_cell(r)} |",
            "",
        ]

    data = loaded["rate_limits"]
    if data is not None:
        r = data["result"]
        low, high = r["latency_ms"]
        lines += [
            f"## Rate limits: hidden concurrency cap K, latency {low}-{high} ms, "
            f"{r['work_at_cap_s']:.0f} s of work at the cap (target goodput ÷ cap ≥ "
            f"{TARGET_GOODPUT}, 429s ≤ {TARGET_429:.0%}, 0 failed)",
            "",
            "Cap = K ÷ mean latency of the answered calls. The fixed semaphore of 20 runs for "
            f"{r['baseline_time_box_s']:.0f} s; its goodput counts that window.",
            "",
            "| K | agents | who | goodput ÷ cap (whole run) | steady (10-90 %) | "
            "mean in flight ÷ K | 429 share | failed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in r["caps"]:
            for who, key in (("service", "service"), ("semaphore 20", "semaphore_20")):
                x = row[key]
                share = x["simulator"]["share_429"]
                mark = ""
                if key == "service":
                    ok = (
                        x["goodput_over_cap"] >= TARGET_GOODPUT
                        and (share or 0) <= TARGET_429
                        and x["failed"] == 0
                    )
                    mark = " " + _mark(ok)
                lines.append(
                    f"| {row['cap']} | {row['agents']} | {who} | "
                    f"{x['goodput_over_cap']:.3f}{mark} | {_f(x['steady_goodput_over_cap'], 3)} "
                    f"| {_f(x.get('mean_in_flight_over_cap'), 3)} | {_f(share, 3)} "
                    f"| {x['failed']} |"
                )
        lines.append("")

    data = loaded["api_load"]
    if data is not None:
        r = data["result"]
        sse = r["sse"]
        lines += [
            f"## API under load: a {r['agents']:,}-agent layered job, "
            f"{sse['subscribers']} SSE subscribers, GET /jobs/{{id}} polled meanwhile",
            "",
            "| GET /jobs/{id} p50 / p99 ms | same, ?agents=false | SSE streams complete | "
            "reconnects | lag p50 / p99 ms | job makespan ÷ bound |",
            "|---|---|---|---|---|---|",
            f"| {_f(r['get_job_full']['p50_ms'], 1)} / {_f(r['get_job_full']['p99_ms'], 1)} | "
            f"{_f(r['get_job_no_agents']['p50_ms'], 1)} / "
            f"{_f(r['get_job_no_agents']['p99_ms'], 1)} | "
            f"{sse['complete_streams']}/{sse['subscribers']} | {sse['reconnects']} | "
            f"{_f(sse['lag_ms_p50'], 1)} / {_f(sse['lag_ms_p99'], 1)} | {r['ratio']:.3f} |",
            "",
        ]
    data = loaded["map"]
    if data is not None:
        r = data["result"]
        low, high = r["latency_ms"]
        lines += [
            f"## Map node: planner → {r['items']:,} items → reducer (latency uniform "
            f"{low}-{high} ms, concurrency {r['concurrency']})",
            "",
            "Bound: plan + max(the items' busy time ÷ concurrency, the longest item) + "
            "report; ideal: a zero-overhead ready-queue schedule; both from that run's own "
            "upstream busy times. The gaps come from the simulator's log: from the start "
            "(the POST, or the baseline's first line) to the plan's request, the plan's "
            "answer to the first "
            "item's request, the last item's answer to the report's request, and the report's "
            "answer to the end (the job's finished_at). gather: the same calls by hand, "
            "asyncio.gather under a semaphore.",
            "",
            "| strategy | makespan s | bound s | ÷ bound | ÷ ideal | requests | 429s | "
            "start → plan s | plan → first item s | last item → report s | report → end s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in r["runs"]:
            sim = run["simulator"]
            ph = run["phases"]
            failed = f", {run['failed']} failed" if run.get("failed") else ""
            lines.append(
                f"| {run['strategy']}{failed} | {run['makespan_s']:.2f} | "
                f"{run['lower_bound']['value_s']:.2f} | {run['ratio']:.3f} | "
                f"{run['ratio_to_ideal']:.3f} | {sim['requests']:,} | "
                f"{sim['by_status'].get('429', 0)} | {_f(ph.get('start_to_source_s'), 3)} | "
                f"{_f(ph['source_to_first_item_s'], 3)} | {_f(ph['last_item_to_sink_s'], 3)} | "
                f"{_f(ph.get('sink_to_end_s'), 3)} |"
            )
        lines.append("")
    return "\n".join(lines)


def sanity(name: str, result: dict[str, Any]) -> list[str]:
    """What is wrong with a scenario's output (never a speed: only that it ran and makes sense)."""
    problems: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    if name == "makespan":
        for run in result["runs"]:
            label = f"{run.get('upstream', 'simulator')}/{run['graph']}/{run['strategy']}"
            check(run["failed"] == 0, f"{label}: {run['failed']} agents failed")
            check(run["requests_unmatched"] == 0, f"{label}: requests not mapped to agents")
            if _timed_out(run):  # reported as such; its bound covers only what it called
                continue
            check(run["agents_called"] == run["agents"], f"{label}: not every agent was called")
            # A true lower bound: a makespan below it means the measurement is broken.
            check(run["ratio"] >= 0.99, f"{label}: makespan below the lower bound")
    elif name == "overhead":
        for row in result["transports"]:
            check(
                row["service"]["counts"]["completed"] == row["agents"],
                f"{row['transport']}: service did not complete every agent",
            )
            check(row["bare"]["failed"] == 0, f"{row['transport']}: bare loop calls failed")
            check(row["service_over_bare"] > 0, f"{row['transport']}: no ratio")
    elif name == "scale":
        check(result["counts"]["completed"] == result["agents"], "not every agent completed")
        check(result["peak_rss_mb"] > 0, "no RSS reading")
    elif name == "rate_limits":
        for row in result["caps"]:
            sv = row["service"]
            check(sv["status"] in ("completed", "failed"), f"K={row['cap']}: job did not end")
            check(sv["goodput_over_cap"] > 0, f"K={row['cap']}: no goodput")
            check(row["semaphore_20"]["completed"] > 0, f"K={row['cap']}: baseline did nothing")
            check(
                sv["simulator"]["by_status"].get("200", 0) >= sv["completed"],
                f"K={row['cap']}: more completions than answered calls",
            )
    elif name == "api_load":
        sse = result["sse"]
        check(result["status"] == "completed", f"job ended {result['status']}")
        check(
            sse["complete_streams"] == sse["subscribers"],
            f"only {sse['complete_streams']}/{sse['subscribers']} complete streams",
        )
        check(result["get_job_full"]["requests"] > 0, "no GET /jobs/{id} measured")
        check(result["ratio"] >= 0.99, "makespan below the lower bound")
    elif name == "map":
        for run in result["runs"]:
            label = run["strategy"]
            check(run["status"] == "completed", f"{label}: ended {run['status']}")
            check(run.get("failed", 0) == 0, f"{label}: {run.get('failed')} agents failed")
            check(run["requests_unmatched"] == 0, f"{label}: requests not mapped to agents")
            check(not run["agents_unknown"], f"{label}: unexpected agents {run['agents_unknown']}")
            check(
                run["agents_called"] == run["agents"],
                f"{label}: {run['agents_called']} of {run['agents']} agents called",
            )
            # A true lower bound: a makespan below it means the measurement is broken.
            check(run["ratio"] >= 0.99, f"{label}: makespan below the lower bound")
    return problems
