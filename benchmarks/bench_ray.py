"""Benchmark: ``qualiclip-score`` against ``qualiclip-score --ray`` on one machine (Ray's overhead).

The same photos (500 of 224x224 and 20 of 1024x768, JPEG) and the same full-size random RN50 checkpoint (the test
suite's ``RN50_CONFIG``, as in ``bench_score.py``) go through four runners, each a fresh process:

- ``plain``: ``qualiclip-score FOLDER --weights CKPT -q -o OUT.csv``
- ``ray (new cluster)``: the same with ``--ray``: the command starts a local Ray cluster and stops it at the end,
  as a user without a cluster would run it;
- ``ray (running cluster)``: ``--ray HOST:PORT`` of a local cluster started once beforehand (``ray start --head
  --block``), as on a real cluster, where the cluster outlives the job;
- ``ray (running cluster, 2 actors x 1 CPU)``: the same with ``--actors 2 --cpus-per-actor 1``, the layout Ray
  would choose with one CPU per actor (the default before it became "the node's CPUs, at most 4").

Per runner: ``--repeats`` timed runs, then one memory run. A timed run measures wall time (process start to exit),
images/s over that time and the whole machine's busy CPU seconds (``/proc/stat``), and samples nothing: sampling
Ray's dozen processes would take CPU from the run being measured. The memory run samples, every 0.2 s from
``/proc``, the largest sum of PSS (proportional set size: shared pages split between the processes sharing them) over
every process of the run: for Ray that is the driver, the GCS, the raylet, its agents and the worker processes (and,
for the running cluster, its idle processes too). Runners alternate, and the report shows medians. Run it on a quiet
machine: the CPU figure counts everything the machine did.

Usage (Linux)::

    python benchmarks/bench_ray.py [--repeats 3] >> benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import REPO, _busy_cpu_seconds, _checkpoint, _cpu_model, _photos  # noqa: E402

SETS = {"224x224": (224, 224, 500), "1024x768": (1024, 768, 20)}
RUNNERS = ("plain", "ray (new cluster)", "ray (running cluster)", "ray (running cluster, 2 actors x 1 CPU)")
OVERHEAD_TARGET = 0.25
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per runner and set; medians are reported")
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="checkpoint, photos and outputs")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--explain", action="store_true",
                        help="instead: where the CPU time of one plain and one --ray run goes, per process, and "
                             "the CPU cost per image of RN50 with 1 and 2 torch threads")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    checkpoint, _ = _checkpoint(workdir / "rn50-random.pth")
    if args.explain:
        print(explain(workdir, checkpoint))
        return
    started = datetime.datetime.now()
    load_before = os.getloadavg()[0]
    results: Dict[str, Dict[str, List[dict]]] = {}
    with RunningCluster(workdir / "ray-tmp") as address:
        for name in args.sets:
            width, height, count = SETS[name]
            folder = _photos(workdir / f"{name}x{count}", width, height, count)
            runs: Dict[str, List[dict]] = {runner: [] for runner in RUNNERS}
            # Timed runs sample nothing: reading /proc/PID/smaps_rollup of Ray's dozen processes every 0.2 s
            # took ~1.5 s of a 2-core machine's time from a 15 s run. Memory comes from one extra run per runner.
            for repeat in range(args.repeats + 1):
                for runner in RUNNERS:
                    out = workdir / f"out-{RUNNERS.index(runner)}.csv"
                    ray_args = {"plain": [], "ray (new cluster)": ["--ray"],
                                "ray (running cluster)": ["--ray", address.name],
                                "ray (running cluster, 2 actors x 1 CPU)": ["--ray", address.name, "--actors", "2",
                                                                            "--cpus-per-actor", "1"]}[runner]
                    cli_args = [*ray_args, str(folder), "--weights", str(checkpoint), "-q", "-o", str(out)]
                    if repeat == args.repeats:
                        memory = measure(cli_args, count, extra_tree=address.pid if "running" in runner else None)
                        for run in runs[runner]:
                            run["peak_pss_mb"] = memory["peak_pss_mb"]
                        print(f"{name} {runner}: peak {memory['peak_pss_mb']:.0f} MB", file=sys.stderr)
                        continue
                    run = measure(cli_args, count, sample=False)
                    run["scores"] = read_scores(out)
                    runs[runner].append(run)
                    print(f"{name} {runner} #{repeat + 1}: wall {run['wall_s']:.1f} s, {run['images_per_s']:.2f} "
                          f"img/s, CPU {run['cpu_s']:.1f} s (machine)", file=sys.stderr)
            results[name] = runs
    print(report(results, args, started, load_before))


class RunningCluster:
    """A local Ray cluster (2 CPUs, no dashboard) in a child process for the benchmark's lifetime."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.process: Optional[subprocess.Popen] = None
        self.name = ""
        self.pid = 0

    def __enter__(self) -> "RunningCluster":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        # Without token authentication, so that a client needs nothing but the address (Ray >= 2.5x turns it on
        # for clusters started by `ray start`).
        self.process = subprocess.Popen(
            [ray, "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard=false", "--port", str(port),
             "--temp-dir", str(self.temp_dir), "--disable-usage-stats"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        self.name, self.pid = f"127.0.0.1:{port}", self.process.pid
        deadline = time.time() + 120
        while time.time() < deadline:  # ready when a client can connect
            probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init('{self.name}'); ray.shutdown()"],
                                   capture_output=True)
            if probe.returncode == 0:
                return self
            time.sleep(2)
        self.__exit__()
        raise SystemExit("the Ray cluster did not start")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)


def measure(cli_args: Sequence[str], images: int, extra_tree: Optional[int] = None,
            sampler_out: Optional["TreeSampler"] = None, sample: bool = True) -> dict:
    """Runs ``qualiclip-score`` once; wall time, images/s, CPU seconds and peak PSS of its process tree (plus
    ``extra_tree``).

    ``sampler_out``: a sampler (with no roots yet) to use, so that the caller can read its details afterwards.
    ``sample=False``: no sampler, so that the measurement takes no CPU from the run; ``cpu_s`` is then the whole
    machine's busy CPU time during the run (a running cluster's idle daemons included), and there is no memory figure.
    """
    busy_before = _busy_cpu_seconds()
    spawned = time.time()
    child = subprocess.Popen([sys.executable, "-m", "qualiclip_infer", *cli_args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = (sampler_out or TreeSampler([])) if sample else None
    if sampler is not None:
        sampler.roots = [child.pid] + ([extra_tree] if extra_tree else [])
        sampler.start()
    stderr = child.communicate()[1]
    exited = time.time()
    if sampler is not None:
        sampler.stop()
    if child.returncode != 0:
        raise SystemExit(f"qualiclip-score {' '.join(cli_args)} failed ({child.returncode}):\n{stderr}")
    wall = exited - spawned
    run = dict(wall_s=wall, images_per_s=images / wall)
    if sampler is None:
        return dict(run, cpu_s=_busy_cpu_seconds() - busy_before)
    return dict(run, cpu_s=sampler.cpu_s(), peak_pss_mb=sampler.peak_pss_kb / 1024)


class TreeSampler(threading.Thread):
    """Samples the summed PSS of process trees every 0.2 s (Linux ``/proc``), and their CPU time."""

    def __init__(self, roots: List[int]):
        super().__init__(daemon=True)
        self.roots = roots
        self.peak_pss_kb = 0
        self._cpu_ticks: Dict[int, int] = {}
        self.names: Dict[int, str] = {}  # what each process was last seen doing (Ray renames its workers)
        self._first_ticks: Dict[int, int] = {}  # CPU time already used by processes older than the run
        self._stop_event = threading.Event()
        with open("/proc/uptime") as f:
            self._start_ticks = int(float(f.read().split()[0]) * _CLOCK_TICKS) - _CLOCK_TICKS  # 1 s of slack

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = self._tree()
            self.peak_pss_kb = max(self.peak_pss_kb, sum(_pss_kb(pid) for pid in pids))
            for pid in pids:
                ticks = _cpu_ticks(pid)
                if ticks is not None:
                    if pid not in self._cpu_ticks and pid != self.roots[0] and not self._started_since(pid):
                        self._first_ticks[pid] = ticks
                    self._cpu_ticks[pid] = ticks
                    name = _process_name(pid)
                    if name and (pid not in self.names or name != "ray::IDLE"):
                        self.names[pid] = name
            self._stop_event.wait(0.2)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def cpu_by_name(self) -> Dict[str, float]:
        """:meth:`cpu_s`, split by process name."""
        by_name: Dict[str, float] = {}
        for pid, ticks in self._cpu_ticks.items():
            name = self.names.get(pid, "?")
            by_name[name] = by_name.get(name, 0.0) + (ticks - self._first_ticks.get(pid, 0)) / _CLOCK_TICKS
        return by_name

    def cpu_s(self) -> float:
        """CPU seconds the sampled processes used during the run, as last seen (a lower bound: a process that exits
        loses up to one sampling interval). Processes older than the run (a running cluster's) count from the first
        sample."""
        return sum(ticks - self._first_ticks.get(pid, 0) for pid, ticks in self._cpu_ticks.items()) / _CLOCK_TICKS

    def _started_since(self, pid: int) -> bool:
        """Whether a process started after this sampler (else it belongs to the running cluster from before)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            return True
        return start_ticks >= self._start_ticks

    def _tree(self) -> List[int]:
        children: Dict[int, List[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                parent = _parent(int(entry))
                if parent is not None:
                    children.setdefault(parent, []).append(int(entry))
        found, todo = [], list(self.roots)
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found


def _process_name(pid: int) -> str:
    """``ray::...`` titles as they are, Ray's daemons and the CLI by their program, else the command's first word."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            words = f.read().split("\0")
    except OSError:
        return ""
    if words[0].startswith("ray::"):
        return words[0].split(" ")[0].split(".")[0]
    if len(words) > 2 and words[1].endswith("/ray") and words[2] == "start":
        return "ray start"
    for word in words:
        for known in ("gcs_server", "raylet", "dashboard.py", "log_monitor.py", "monitor.py", "qualiclip_infer"):
            if word.endswith(known) or word == known:
                return "qualiclip-score" if known == "qualiclip_infer" else known
    return os.path.basename(words[0])


def _parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cpu_ticks(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except (OSError, ValueError):
        return 0


def explain(workdir: Path, checkpoint: Path) -> str:
    """Markdown: CPU seconds per process of a plain and a ``--ray`` run (running cluster, 500 photos of 224x224),
    and CPU seconds per image of the scorer alone with 1 and 2 torch threads."""
    width, height, count = SETS["224x224"]
    folder = _photos(workdir / f"224x224x{count}", width, height, count)
    lines = ["", "### Where the CPU time goes (`python benchmarks/bench_ray.py --explain`)", "",
             f"One run each on 500 photos of 224x224, a Ray cluster already running; CPU seconds per process "
             f"(load average {os.getloadavg()[0]:.1f} at the start):", "",
             "| process | plain | --ray |", "|---|---:|---:|"]
    split: Dict[str, Dict[str, float]] = {}
    with RunningCluster(workdir / "ray-tmp") as address:
        for runner, ray_args in (("plain", []), ("--ray", ["--ray", address.name])):
            sampler = TreeSampler([])
            measure([*ray_args, str(folder), "--weights", str(checkpoint), "-q", "-o", str(workdir / "explain.csv")],
                    count, extra_tree=address.pid if ray_args else None, sampler_out=sampler)
            split[runner] = sampler.cpu_by_name()
    names = sorted(set(split["plain"]) | set(split["--ray"]), key=lambda n: -split["--ray"].get(n, 0))
    for name in names:
        plain, on_ray = split["plain"].get(name, 0.0), split["--ray"].get(name, 0.0)
        if max(plain, on_ray) >= 0.05:
            lines.append(f"| `{name}` | {plain:.1f} | {on_ray:.1f} |")
    lines.append(f"| total | {sum(split['plain'].values()):.1f} | {sum(split['--ray'].values()):.1f} |")
    lines += ["", "CPU seconds per 224x224 image of `QualityScorer.iter_scores` alone (120 photos, model loaded, one "
                  "process; 2 runs each):", "", "| torch threads | CPU s / image | wall s / image |", "|---:|---:|---:|"]
    program = ("import resource, sys, time, glob, torch; torch.set_num_threads(int(sys.argv[1])); "
               "from qualiclip_infer import QualityScorer; paths = sorted(glob.glob(sys.argv[2] + '/*.jpg'))[:120]; "
               "s = QualityScorer(sys.argv[3], device='cpu'); r = resource.getrusage(resource.RUSAGE_SELF); "
               "t = time.time(); list(s.iter_scores(paths)); e = resource.getrusage(resource.RUSAGE_SELF); "
               "print((e.ru_utime + e.ru_stime - r.ru_utime - r.ru_stime) / 120, (time.time() - t) / 120)")
    for threads in (1, 2):
        runs = [subprocess.run([sys.executable, "-c", program, str(threads), str(folder), str(checkpoint)],
                               capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
                for _ in range(2)]
        lines.append(f"| {threads} | {', '.join(run[0][:6] for run in runs)} | "
                     f"{', '.join(run[1][:6] for run in runs)} |")
    return "\n".join(lines)


def read_scores(path: Path) -> Dict[str, float]:
    with open(path, newline="") as f:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(f) if row["score"]}


def report(results: Dict[str, Dict[str, List[dict]]], args: argparse.Namespace, started: datetime.datetime,
           load_before: float) -> str:
    import ray
    import torch

    lines = ["", "## `qualiclip-score --ray` against `qualiclip-score` on one machine", "",
             f"- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs (`lscpu`); CPU, fp32; load average "
             f"{load_before:.1f} when the run started",
             f"- Date: {started:%Y-%m-%d %H:%M}; Python {platform.python_version()}, torch {torch.__version__}, "
             f"ray {ray.__version__}",
             f"- Command: `python benchmarks/bench_ray.py --repeats {args.repeats}`; medians of {args.repeats} runs "
             "per runner, runners alternating, sampling nothing (CPU: the whole machine's busy time during the run, "
             "from `/proc/stat`); peak memory from one more run per runner, sampled every 0.2 s",
             "- Checkpoint: full-size RN50 with random weights (`tests/helpers.py` `RN50_CONFIG`); all options "
             "default (with `--ray` here: one actor of 2 CPUs and 2 torch threads), except the last runner's", "",
             "| photos | runner | wall s | images/s | overhead (wall) | CPU s, machine | overhead (CPU) "
             "| peak memory MB (PSS, all processes) | each run: wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    verdicts = []
    for name, runs in results.items():
        count = SETS[name][2]
        plain_wall = statistics.median(r["wall_s"] for r in runs["plain"])
        plain_cpu = statistics.median(r["cpu_s"] for r in runs["plain"])
        for runner, runner_runs in runs.items():
            wall = statistics.median(r["wall_s"] for r in runner_runs)
            cpu = statistics.median(r["cpu_s"] for r in runner_runs)
            overhead = wall / plain_wall - 1
            each = ", ".join(f"{r['wall_s']:.1f}" for r in runner_runs)
            lines.append(f"| {name} ×{count} | {runner} | {wall:.1f} | "
                         f"{statistics.median(r['images_per_s'] for r in runner_runs):.2f} | "
                         f"{'—' if runner == 'plain' else f'{overhead:+.0%}'} | {cpu:.1f} | "
                         f"{'—' if runner == 'plain' else f'{cpu / plain_cpu - 1:+.0%}'} | "
                         f"{statistics.median(r['peak_pss_mb'] for r in runner_runs):.0f} | {each} |")
            if runner != "plain":
                verdicts.append((f"{name}, {runner}: overhead ≤ {OVERHEAD_TARGET:.0%}", f"{overhead:+.0%}",
                                 overhead <= OVERHEAD_TARGET))
        reference = runs["plain"][-1]["scores"]
        for runner in RUNNERS[1:]:
            scores = runs[runner][-1]["scores"]
            same = set(scores) == set(reference)
            difference = max((abs(scores[p] - reference[p]) for p in reference if p in scores), default=0.0)
            verdicts.append((f"{name}, {runner}: same paths and scores as plain",
                             f"{'same' if same else 'DIFFERENT'} paths, max difference {difference:.1e}",
                             same and difference <= 1e-6))
    lines += ["", "| target | result | met |", "|---|---|---|"]
    lines += [f"| {target} | {result} | {'yes' if met else '**no**'} |" for target, result, met in verdicts]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
