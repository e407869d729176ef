"""shardmq against Mosquitto, scenario by scenario: ``python -m bench.compare``.

Every run starts a fresh broker (so memory figures start from the same baseline), drives it
with ``python -m bench.load`` and keeps the generator's JSON line. Brokers alternate within a
repetition and the order flips between repetitions, so slow drift of the machine (thermal,
noisy neighbours) lands on both sides; each figure is the median of ``--repeat`` runs.

The broker is pinned to CPU 0 and the generator to CPU 1 (when the machine has two CPUs or
more), so throughput figures are per broker core. Results go to ``bench/RESULTS.md`` with the
raw runs in ``bench/results.json`` and charts in ``bench/*.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.brokers import (
    Broker,
    BrokerError,
    Mosquitto,
    Shardmq,
    mosquitto_version,
    serve_accepts,
    shardmq_version,
)

BENCH = Path(__file__).resolve().parent
#: Generator CPU share from which a figure may measure the generator rather than the broker.
GENERATOR_BOUND = 0.85
ROOT = BENCH.parent


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    mode: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    metrics: tuple[tuple[str, str], ...]  # (label, dotted path into the result)
    higher_is_better: bool = True
    gen_procs: int = 1  # at least; compare.py runs one per generator CPU
    source_addrs: int = 0  # spread clients over 127.0.0.2... (ephemeral ports per address)
    min_workers: int = 1
    timeout: float = 120.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    transport: str = "tcp"  # "ws": brokers get a WebSocket listener, bench.load --transport ws
    baseline: str = ""  # a scenario whose first figure this table shows beside its own


#: Arguments shared by S3 and S3-WS.
S3_ARGS = (
    "--pattern", "pairwise", "--pubs", "100", "--subs", "100", "--qos", "0",
    "--size", "64", "--duration", "10", "--warmup", "2",
)  # fmt: skip
S3_QUICK_ARGS = (
    "--pattern", "pairwise", "--pubs", "20", "--subs", "20", "--qos", "0",
    "--size", "64", "--duration", "2", "--warmup", "0.5",
)  # fmt: skip


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "S1",
        "Connect 10,000 clients",
        "conn",
        ("-n", "10000", "--hold", "1"),
        ("-n", "1000", "--hold", "0.5"),
        (("conn/s", "conn_per_s"), ("connected", "connected")),
    ),
    Scenario(
        "S2",
        "10,000 subscriptions",
        "sub",
        ("-n", "10000", "--topics", "1"),
        ("-n", "1000", "--topics", "1"),
        (("subs/s", "subs_per_s"), ("subscribed", "subscriptions")),
    ),
    Scenario(
        "S3",
        "Pairwise QoS 0, 100 pub -> 100 sub, 64 B, saturated",
        "pubsub",
        S3_ARGS,
        S3_QUICK_ARGS,
        (
            ("delivered msg/s", "delivered_per_s"),
            ("lost", "lost"),
            ("p99 us", "latency_us.p99"),
        ),
    ),
    Scenario(
        "S3-WS",
        "S3 over WebSocket: pairwise QoS 0, 100 pub -> 100 sub, 64 B, saturated",
        "pubsub",
        S3_ARGS,
        S3_QUICK_ARGS,
        (
            ("delivered msg/s", "delivered_per_s"),
            ("lost", "lost"),
            ("p99 us", "latency_us.p99"),
        ),
        transport="ws",
        baseline="S3",
        notes="S3 with every client on the broker's WebSocket listener (path /mqtt, "
        "subprotocol mqtt): one masked binary frame per generator write, the broker's frames "
        "as they come. The S3 columns are the same broker's TCP figure from this comparison.",
    ),
    Scenario(
        "S4",
        "Fan-out QoS 0, 1 pub -> 1,000 sub, 64 B, saturated",
        "pubsub",
        ("--pattern", "fanout", "--pubs", "1", "--subs", "1000", "--qos", "0")
        + ("--size", "64", "--duration", "10", "--warmup", "2", "--window", "256"),
        ("--pattern", "fanout", "--pubs", "1", "--subs", "200", "--qos", "0")
        + ("--size", "64", "--duration", "2", "--warmup", "0.5", "--window", "256"),
        (("delivered msg/s", "delivered_per_s"), ("lost", "lost")),
        notes="The publisher may be 256 messages (256,000 deliveries) ahead of its "
        "subscribers; with the default 64 a fast broker is limited by the round trip.",
    ),
    Scenario(
        "S5",
        "Pairwise QoS 1, 100 pub -> 100 sub, 64 B, saturated",
        "pubsub",
        ("--pattern", "pairwise", "--pubs", "100", "--subs", "100", "--qos", "1")
        + ("--size", "64", "--duration", "10", "--warmup", "2"),
        ("--pattern", "pairwise", "--pubs", "20", "--subs", "20", "--qos", "1")
        + ("--size", "64", "--duration", "2", "--warmup", "0.5"),
        (
            ("delivered msg/s", "delivered_per_s"),
            ("lost", "lost"),
            ("dup", "dup"),
        ),
    ),
    Scenario(
        "S6",
        "Latency at 20,000 msg/s, pairwise QoS 0, 100 pub -> 100 sub",
        "pubsub",
        ("--pattern", "pairwise", "--pubs", "100", "--subs", "100", "--qos", "0")
        + ("--rate", "20000", "--duration", "10", "--warmup", "2"),
        ("--pattern", "pairwise", "--pubs", "20", "--subs", "20", "--qos", "0")
        + ("--rate", "5000", "--duration", "2", "--warmup", "0.5"),
        (
            ("p50 us", "latency_us.p50"),
            ("p99 us", "latency_us.p99"),
            ("p99.9 us", "latency_us.p999"),
            ("delivered msg/s", "delivered_per_s"),
        ),
        higher_is_better=False,
    ),
    Scenario(
        "S7",
        "50,000 idle connections held",
        "conn",
        ("-n", "50000", "--hold", "5", "--connect-timeout", "5"),
        ("-n", "3000", "--hold", "1", "--connect-timeout", "5"),
        (
            ("held", "held"),
            ("bytes/conn", "broker_bytes_per_conn"),
            ("conn/s", "conn_per_s"),
            ("connect errors", "errors"),
        ),
        gen_procs=4,
        source_addrs=4,
        min_workers=4,
        timeout=300.0,
        notes="One process may hold 20,000 files here, so shardmq runs with at least 4 "
        "workers and the generator with 4 processes over 4 source addresses; Mosquitto is a "
        "single process and stops near its own limit.",
    ),
)


# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One broker configuration: a row of every table."""

    label: str
    kind: str  # "shardmq" | "mosquitto"
    workers: str = "1"
    skip: str = ""
    #: scenario key -> why this target does not run it (e.g. no WebSocket support)
    skips: dict[str, str] = field(default_factory=dict)

    def make(self, scenario: Scenario, cpus: list[int]) -> Broker:
        ws = scenario.transport == "ws"
        if self.kind == "mosquitto":
            return Mosquitto(cpus=cpus, ws=ws)
        workers = self.workers
        if scenario.min_workers > 1 and workers != "auto" and int(workers) < scenario.min_workers:
            workers = str(scenario.min_workers)
        return Shardmq(workers=workers, cpus=cpus, ws=ws)

    def runs(self, scenario: Scenario) -> bool:
        return not self.skip and scenario.key not in self.skips


def get(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def run_generator(
    scenario: Scenario, broker: Broker, args: tuple[str, ...], gen_cpus: list[int]
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.load", scenario.mode, *args]
    port = broker.port
    if scenario.transport == "ws":
        cmd += ["--transport", "ws"]
        port = broker.ws_port
    cmd += ["--port", str(port), "--broker-pid", str(broker.pid), "--quiet"]
    # One generator process per generator CPU; more where the open-file limit needs them.
    cmd += ["--procs", str(max(scenario.gen_procs, len(gen_cpus)))]
    if gen_cpus:
        cmd += ["--cpus", ",".join(str(c) for c in gen_cpus)]
    if scenario.source_addrs:
        addrs = [f"127.0.0.{2 + i}" for i in range(scenario.source_addrs)]
        cmd += ["--source-addrs", ",".join(addrs)]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=scenario.timeout
        )
    except subprocess.TimeoutExpired:
        return {"run_failed": f"generator timed out after {scenario.timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"run_failed": f"generator exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def plan_targets(workers_list: list[str]) -> list[Target]:
    """One row per shardmq --workers value (skipped, with the reason, if it cannot start)."""
    targets = []
    for workers in workers_list:
        t = Target(f"shardmq w={workers}", "shardmq", workers)
        if workers != "1" and not serve_accepts("--workers"):
            t.skip = "`shardmq serve` does not accept --workers yet"
        else:
            t.skip = why_not_starting(workers)
        targets.append(t)
    targets.append(Target("mosquitto", "mosquitto"))
    return targets


def why_not_starting(workers: str) -> str:
    """Empty if ``shardmq serve --workers W`` starts here, else the reason it did not."""
    try:
        with Shardmq(workers=workers):
            return ""
    except BrokerError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return f"shardmq --workers {workers} did not start: {' / '.join(lines[-2:])}"


def why_no_websockets(target: Target) -> str:
    """Empty if ``target`` starts with a WebSocket listener here, else the reason it did not."""
    if target.kind != "mosquitto":
        return ""  # shardmq always has --ws-port; a failure shows up as a failed run
    try:
        with Mosquitto(ws=True):
            return ""
    except BrokerError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return (
            f"Mosquitto {mosquitto_version()} did not start a websockets listener "
            f"({' / '.join(lines[-2:])})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS))
    parser.add_argument("--workers-list", default="1", help="shardmq --workers values: 1,2,auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small counts, short runs")
    parser.add_argument("--broker-cpus", default=None, help="default 0 (if 2+ CPUs)")
    parser.add_argument("--gen-cpus", default=None, help="default 1 (if 2+ CPUs)")
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    opts = parser.parse_args(argv)

    ncpu = len(os.sched_getaffinity(0))
    broker_cpus = _cpus(opts.broker_cpus, [0] if ncpu >= 2 else [])
    gen_cpus = _cpus(opts.gen_cpus, [1] if ncpu >= 2 else [])
    wanted = [k.strip().upper() for k in opts.scenarios.split(",") if k.strip()]
    scenarios = [s for s in SCENARIOS if s.key in wanted]
    unknown = set(wanted) - {s.key for s in scenarios}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    targets = plan_targets([w.strip() for w in opts.workers_list.split(",") if w.strip()])
    for scenario in scenarios:
        if scenario.transport == "ws":
            for t in targets:
                why = "" if t.skip else why_no_websockets(t)
                if why:
                    t.skips[scenario.key] = why
                    log(f"{scenario.key}: {t.label} skipped: {why}")

    command = "python -m bench.compare " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)
    out = Path(opts.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "quick": opts.quick,
        "broker_cpus": broker_cpus,
        "gen_cpus": gen_cpus,
        "machine": machine_info(),
        "targets": [t.__dict__ for t in targets],
        "runs": [],
    }
    runs: list[dict[str, Any]] = raw["runs"]
    raw_path = out.parent / "results.json"
    for scenario in scenarios:
        args = scenario.quick_args if opts.quick else scenario.args
        active = [t for t in targets if t.runs(scenario)]
        for rep in range(opts.repeat):
            order = active if rep % 2 == 0 else list(reversed(active))
            for target in order:
                log(f"{scenario.key} {target.label} run {rep + 1}/{opts.repeat}")
                result = run_once(scenario, target, args, broker_cpus, gen_cpus)
                runs.append(
                    {"scenario": scenario.key, "target": target.label, "rep": rep, **result}
                )
                log("  " + summary(scenario, result))
                # Saved after every run, so an interrupted comparison keeps what it measured.
                raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    raw["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    charts = draw_charts(scenarios, targets, runs, out.parent)
    out.write_text(render_markdown(raw, scenarios, targets, runs, charts))
    log(f"wrote {out}")
    return 0


def run_once(
    scenario: Scenario,
    target: Target,
    args: tuple[str, ...],
    broker_cpus: list[int],
    gen_cpus: list[int],
) -> dict[str, Any]:
    broker = target.make(scenario, broker_cpus)
    try:
        broker.start()
    except BrokerError as exc:
        return {"run_failed": str(exc).splitlines()[0]}
    try:
        time.sleep(0.3)  # let a multi-worker broker finish starting all its workers
        return run_generator(scenario, broker, args, gen_cpus)
    finally:
        broker.stop()


def summary(scenario: Scenario, result: dict[str, Any]) -> str:
    if "run_failed" in result:
        return f"FAILED: {result['run_failed']}"
    parts = [f"{label}={get(result, path)}" for label, path in scenario.metrics]
    if "generator_cpu" in result:
        parts.append(f"gen_cpu={result['generator_cpu']['cores']}")
    if "broker_cpu" in result:
        parts.append(f"broker_cpu={result['broker_cpu']['cores']}")
    return " ".join(parts)


def log(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", file=sys.stderr, flush=True)


def _cpus(text: str | None, default: list[int]) -> list[int]:
    if text is None:
        return default
    return [int(x) for x in text.split(",") if x.strip()]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    import psutil
    import uvloop

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(psutil.cpu_count(logical=True)),
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "uvloop": uvloop.__version__,
        "mosquitto": mosquitto_version(),
        "shardmq": shardmq_version(),
        "commit": _commit(),
    }


def _commit() -> str:
    """The checkout's commit (with "+changes" when its tree differs), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "shardmq"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head + ("+changes" if dirty else "")) or "unknown"


def medians(
    runs: list[dict[str, Any]], scenario: Scenario, target: Target
) -> tuple[dict[str, Any], int, list[str]]:
    mine = [r for r in runs if r["scenario"] == scenario.key and r["target"] == target.label]
    ok = [r for r in mine if "run_failed" not in r]
    failures = [r["run_failed"] for r in mine if "run_failed" in r]
    out: dict[str, Any] = {}
    extra = (
        ("gen", "generator_cpu.cores"),
        ("share", "generator_cpu.share"),
        ("b", "broker_cpu.cores"),
        ("bus", "broker_cpu.us_per_op"),
    )
    for _, path in scenario.metrics + extra:
        values = [get(r, path) for r in ok]
        values = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        out[path] = statistics.median(values) if values else None
    return out, len(ok), failures


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_markdown(
    raw: dict[str, Any],
    scenarios: list[Scenario],
    targets: list[Target],
    runs: list[dict[str, Any]],
    charts: list[str],
) -> str:
    m = raw["machine"]
    lines = [
        "# shardmq vs Mosquitto",
        "",
        "Generated by `bench/compare.py`; do not edit by hand. Reproduce with:",
        "",
        "```",
        raw["command"],
        "```",
        "",
        f"- Date: {raw['started']} to {raw['finished']} (UTC)"
        + (" - **quick smoke run, not a measurement**" if raw["quick"] else ""),
        f"- CPU: {m['cpu']}, {m['cores']} logical cores; RAM {m['ram']}",
        f"- Kernel {m['kernel']} ({m['os']})",
        f"- Python {m['python']}, uvloop {m['uvloop']}, Mosquitto {m['mosquitto']}, "
        f"shardmq {m['shardmq']}",
        f"- Broker pinned to CPU {_cpu_text(raw['broker_cpus'])}, generator to CPU "
        f"{_cpu_text(raw['gen_cpus'])}; each figure is the median of the runs shown.",
        "",
    ]
    skipped = [t for t in targets if t.skip]
    for t in skipped:
        lines.append(f"- {t.label} skipped: {t.skip}")
    if skipped:
        lines.append("")
    mosq = next(t for t in targets if t.kind == "mosquitto")
    for scenario in scenarios:
        lines += [f"## {scenario.key}: {scenario.title}", ""]
        if scenario.notes:
            lines += [scenario.notes, ""]
        args = " ".join(scenario.quick_args if raw["quick"] else scenario.args)
        if scenario.transport != "tcp":
            args += f" --transport {scenario.transport}"
        lines += [f"`python -m bench.load {scenario.mode} {args}`", ""]
        baseline = next((s for s in scenarios if s.key == scenario.baseline), None)
        header = ["broker", "runs", *[label for label, _ in scenario.metrics]]
        header += ["vs Mosquitto"]
        if baseline is not None:
            header += [
                f"{baseline.key} ({baseline.transport.upper()}) {baseline.metrics[0][0]}",
                f"{scenario.transport.upper()} / {baseline.transport.upper()}",
            ]
        header += ["generator CPU", "broker CPU", "broker CPU us/op"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        base, _, _ = medians(runs, scenario, mosq)
        first_path = scenario.metrics[0][1]
        notes = []
        for t in targets:
            if t.skip:
                continue
            if scenario.key in t.skips:
                notes.append(f"- {t.label}: not run: {t.skips[scenario.key]}")
                continue
            med, n, failures = medians(runs, scenario, t)
            ratio = "-"
            if t is not mosq and med[first_path] and base[first_path]:
                ratio = f"{med[first_path] / base[first_path]:.2f}x"
            row = [t.label, str(n), *[fmt(med[p]) for _, p in scenario.metrics], ratio]
            if baseline is not None:
                other = medians(runs, baseline, t)[0].get(baseline.metrics[0][1])
                row.append(fmt(other))
                own = med[first_path]
                row.append(f"{own / other:.2f}x" if own and other else "-")
            row += [
                fmt(med["generator_cpu.cores"]),
                fmt(med["broker_cpu.cores"]),
                fmt(med["broker_cpu.us_per_op"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
            for failure in sorted(set(failures)):
                notes.append(f"- {t.label}: {failures.count(failure)} run(s) failed: {failure}")
            share = med["generator_cpu.share"]
            if share is not None and share >= GENERATOR_BOUND:
                notes.append(
                    f"- {t.label}: the generator used {share:.0%} of its CPUs, so it may be the "
                    "limit here: read this figure as a lower bound for the broker."
                )
        better = "higher" if scenario.higher_is_better else "lower"
        lines += ["", f"Ratio is of the first column ({better} is better)."]
        lines += notes
        lines.append("")
    if charts:
        lines += ["## Charts", ""]
        lines += [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
        lines.append("")
    lines += [
        "## Method",
        "",
        "CPU columns are cores used during the measured window (user+system seconds over wall "
        "time; the generator's sum over all its processes, the broker's over its process tree). "
        "Broker CPU us/op is the broker's CPU microseconds per operation of that window (per "
        "connection in S1, per SUBACK in S2, per delivered message otherwise): it does not "
        "depend on the generator's speed, so it compares the brokers where the generator "
        "bounds the rate. "
        "Saturated runs are closed-loop: each publisher keeps at most `--window` messages that "
        "its subscribers have not yet received, so their latency is queueing time, not network "
        "time; S6 measures latency at a fixed rate. Raw runs: `bench/results.json`.",
        "",
    ]
    return "\n".join(lines)


def _cpu_text(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus) if cpus else "(not pinned)"


def draw_charts(
    scenarios: list[Scenario], targets: list[Target], runs: list[dict[str, Any]], where: Path
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib): no charts")
        return []
    active = [t for t in targets if not t.skip]
    written = []  # a target skipped for one scenario only shows as a zero bar there
    throughput = [s for s in scenarios if s.higher_is_better and s.key != "S7"]
    if throughput:
        fig, axes = plt.subplots(1, len(throughput), figsize=(3.2 * len(throughput), 3.6))
        axes = [axes] if len(throughput) == 1 else list(axes)
        for ax, scenario in zip(axes, throughput, strict=True):
            label, path = scenario.metrics[0]
            values = [medians(runs, scenario, t)[0][path] or 0 for t in active]
            ax.bar([t.label for t in active], values, color=_colors(active))
            ax.set_title(f"{scenario.key}: {label}", fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
            ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        path_png = where / "throughput.png"
        fig.savefig(path_png, dpi=110)
        plt.close(fig)
        written.append(str(path_png))
    # Only fixed-rate scenarios: a saturated run's latency is its queue, set by --window.
    latency = [s for s in scenarios if not s.higher_is_better]
    if latency:
        fig, axes = plt.subplots(1, len(latency), figsize=(4.0 * len(latency), 3.6))
        axes = [axes] if len(latency) == 1 else list(axes)
        for ax, scenario in zip(axes, latency, strict=True):
            paths = [(lb, p) for lb, p in scenario.metrics if p.startswith("latency_us")]
            width = 0.8 / max(1, len(active))
            for k, t in enumerate(active):
                med = medians(runs, scenario, t)[0]
                xs = [i + k * width for i in range(len(paths))]
                ax.bar(xs, [med[p] or 0 for _, p in paths], width, label=t.label)
            ax.set_xticks([i + width * (len(active) - 1) / 2 for i in range(len(paths))])
            ax.set_xticklabels([lb for lb, _ in paths], fontsize=8)
            ax.set_title(f"{scenario.key}: latency (us, lower is better)", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path_png = where / "latency.png"
        fig.savefig(path_png, dpi=110)
        plt.close(fig)
        written.append(str(path_png))
    return written


def _colors(targets: list[Target]) -> list[str]:
    return ["tab:blue" if t.kind == "shardmq" else "tab:orange" for t in targets]


if __name__ == "__main__":
    raise SystemExit(main())
