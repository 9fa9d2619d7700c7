#!/usr/bin/env python3
"""End-to-end latency and peak memory of `cacd serve`: DCMTK storescu sends one study over one
association; cacd scores it and forwards SEG/SR/summary to a DCMTK storescp. Latency runs from
the moment storescu has its last C-STORE answered (it exits right after) to the moment the
receiver has written the last result (storescp answers after writing), both on the wall
clock. Split by stage: the configured quiet period (a series is complete after it), the wait
for the scoring loop, the pipeline's own stage timings (result.json `timings_ms`), and
forwarding (result written → last result at the receiver).

Peak memory is the daemon's VmHWM (peak RSS) plus its scoring worker's (a child process)
after receiving and scoring the study, one fresh daemon per run.

    bench/latency/run.sh     (RUNS=3, QUIET=2, ENGINES="tract onnxruntime", CASES="1.0x150 2.5x80 1.0x500")
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RUNS = int(os.environ.get("RUNS", "3"))
QUIET = float(os.environ.get("QUIET", "2"))
ENGINES = os.environ.get("ENGINES", "tract onnxruntime").split()
CASES = os.environ.get("CASES", "1.0x150 2.5x80 1.0x500").split()
CACD = os.path.abspath(os.environ.get("CACD", "target/release/cacd"))
STORESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
        return json.load(r)


def wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def vm_hwm_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


def one_run(work, study, engine, run):
    d = work / f"run-{engine}-{run}"
    data, recv = d / "data", d / "received"
    recv.mkdir(parents=True)
    port, sport, rport = free_port(), free_port(), free_port()
    cfg = d / "cacd.toml"
    cfg.write_text(f"""
ae_title = "CACD"
listen = "127.0.0.1:{port}"
status = "127.0.0.1:{sport}"
data_dir = "{data}"
quiet_period_s = {QUIET}
accept_any = true
[receive]
min_free_bytes = 268435456
min_free_percent = 0.0
[health]
disk_warn_free_percent = 0.0
[pipeline]
engine = "{engine}"
[[destination]]
ae = "RECV"
host = "127.0.0.1"
port = {rport}
""")
    log = open(d / "serve.log", "wb")
    rcv = subprocess.Popen([STORESCP, "-aet", "RECV", "-od", str(recv), str(rport)],
                           stdout=subprocess.DEVNULL, stderr=log)
    srv = subprocess.Popen([CACD, "serve", "--config", str(cfg)], stdout=log, stderr=log,
                           env=dict(os.environ, CACD_LOG="info"))
    try:
        wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{sport}/readyz", timeout=1).status == 200,
             120, "cacd ready")
        files = sorted(map(str, study.rglob("*.dcm")))
        subprocess.run([STORESCU, "-aet", "CT01", "-aec", "CACD", "127.0.0.1", str(port), *files],
                       check=True, stdout=subprocess.DEVNULL)
        t0 = time.time()
        wait(lambda: status(sport)["queue"].get("delivered", 0) == 1, 1800, "the result delivered")
        # The daemon and its scoring worker (a child process): the sum of their peaks bounds
        # what the box needed at once.
        hwm = vm_hwm_mb(srv.pid)
        worker = max((vm_hwm_mb(c) for c in children(srv.pid)), default=0.0)
        results = list(recv.iterdir())
        t_end = max(p.stat().st_mtime for p in results)
        # The study's CT series; the phantom's localizer series is rejected (not scoreable).
        rj = next(p for p in data.rglob("result.json") if json.loads(p.read_text())["status"] == "scored")
        timings = json.loads(rj.read_text())["timings_ms"]
        t_result = rj.stat().st_mtime
        scoring = sum(timings.values()) / 1e3
        total = t_end - t0
        forward = t_end - t_result
        return {
            "total": total, "quiet": QUIET, "forward": forward,
            "wait": total - QUIET - scoring - forward, **{k: v / 1e3 for k, v in timings.items()},
            "rss_mb": hwm + worker, "daemon_mb": hwm, "worker_mb": worker, "results": len(results),
        }
    finally:
        srv.terminate()
        rcv.terminate()
        srv.wait(30)
        rcv.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def main():
    work = Path(tempfile.mkdtemp(prefix="cacd-bench-latency.", dir=os.environ.get("BENCH_DIR", "/tmp")))
    ncpu = os.cpu_count()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {ncpu} cores, {model}; quiet period {QUIET} s; {RUNS} runs each (median, min-max)")
    rows = []
    try:
        for case in CASES:
            thick, slices = case.split("x")
            study = work / f"study-{case}"
            subprocess.run([CACD, "phantom", "--out", str(study), "--seed", "515151", "--burden", "moderate",
                            "--thickness", thick, "--slices", slices], check=True, stdout=subprocess.DEVNULL)
            for engine in ENGINES:
                runs = []
                for r in range(RUNS):
                    try:
                        runs.append(one_run(work, study, engine, r))
                    except Exception as e:  # an engine this build or machine lacks
                        print(f"{case} {engine}: skipped: {e}")
                        break
                if not runs:
                    continue
                keys = list(runs[0].keys())
                med = {k: statistics.median(x[k] for x in runs) for k in keys}
                lo = {k: min(x[k] for x in runs) for k in keys}
                hi = {k: max(x[k] for x in runs) for k in keys}
                rows.append((case, engine, med, lo, hi))
                stages = " ".join(f"{k} {med[k]:.2f}" for k in keys
                                  if k not in ("total", "rss_mb", "daemon_mb", "worker_mb", "results"))
                print(f"{thick} mm x {slices} {engine}: latency {med['total']:.2f} s ({lo['total']:.2f}-{hi['total']:.2f}); "
                      f"stages s: {stages}; peak RSS {med['rss_mb']:.0f} MB ({lo['rss_mb']:.0f}-{hi['rss_mb']:.0f}; daemon "
                      f"{med['daemon_mb']:.0f} + worker {med['worker_mb']:.0f}); "
                      f"{runs[0]['results']} results")
        print()
        print(f"{'study':<14} {'engine':<12} {'latency s':>10} {'(min-max)':>13} {'quiet':>6} {'wait':>6} "
              f"{'assemble':>8} {'preproc':>8} {'infer':>7} {'score':>6} {'encode':>7} {'forward':>8} {'peak RSS MB':>12}")
        for case, engine, m, lo, hi in rows:
            t, s = case.split("x")
            rng = f"({lo['total']:.1f}-{hi['total']:.1f})"
            print(f"{t + ' mm x ' + s:<14} {engine:<12} {m['total']:>10.2f} {rng:>13} "
                  f"{m['quiet']:>6.1f} {m['wait']:>6.2f} {m.get('assemble', 0):>8.2f} {m.get('preprocess', 0):>8.2f} "
                  f"{m.get('infer', 0):>7.2f} {m.get('score', 0):>6.2f} {m.get('encode', 0):>7.2f} {m['forward']:>8.2f} "
                  f"{m['rss_mb']:>12.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
