#!/usr/bin/env python3
"""Receive throughput: the same DCMTK storescu sending the same 512x512x300 study to
(a) DCMTK storescp (with Nagle off, its best; its default beside it), (b) dicom-rs's
dicom-storescp, (c) `cacd serve` (fsync on), over one
association and over 8 concurrent ones, with each receiver's CPU time per instance; and the
limits: loopback bandwidth (iperf3), the disk's rate for cacd's durability pattern (write a
temp file, fsync, rename, fsync the directory) from one writer and from 8 at once, and what
the disk allows below any file-per-instance design (sequential durable bandwidth; one
fdatasync per instance into a preallocated file), all with the study's own files.

Every server starts on an empty output folder for every run (cacd stores an instance it
already holds only once, so a resend would measure the duplicate path). Times are storescu's
wall time, start to exit of the last sender; each figure is the median of RUNS runs with
min-max, and every ratio is to DCMTK storescp measured in the same invocation.

    bench/receive/run.sh           (RUNS=5 by default)
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
from pathlib import Path

RUNS = int(os.environ.get("RUNS", "5"))
SLICES = int(os.environ.get("SLICES", "300"))
CACD = os.path.abspath(os.environ.get("CACD", "target/release/cacd"))
STORESCP_RS = os.environ.get("DICOM_STORESCP", "dicom-storescp")
# Every receiver offers the same maximum PDU (cacd's default), so none sends smaller packets.
PDU = int(os.environ.get("PDU", "65536"))
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def median_range(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[0], xs[-1]


class Server:
    """One receiver under test: start() on a fresh folder, stored() counts what it wrote."""

    def __init__(self, name, work):
        self.name, self.work, self.proc = name, work, None

    def start(self, port, out, concurrent):
        out.mkdir(parents=True)
        self.out = out
        cmd, env = self.command(port, out, concurrent)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.work / f"{self.name}.log", "ab"),
                                     env=env, cwd=out)
        wait_port(port, self.proc)
        self.ready(port)

    def ready(self, port):
        pass

    def cpu_seconds(self):
        """CPU time (user + system) of the receiver so far, its reaped children included
        (DCMTK's --fork processes)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # After the command name: utime, stime, cutime, cstime are fields 14-17 of stat(5).
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # DCMTK's --fork children outlive the parent for a moment.
        subprocess.run(["pkill", "-f", "--", f"-od {self.out} "], check=False)


class Dcmtk(Server):
    """DCMTK storescp. Debian's DCMTK leaves Nagle's algorithm on unless the environment says
    TCP_NODELAY=1; with it on, every C-STORE response waits out a delayed ACK (~40 ms). The
    baseline is DCMTK at its best (`nodelay`); its default is measured beside it."""

    def __init__(self, name, work, nodelay):
        super().__init__(name, work)
        self.nodelay = nodelay

    def command(self, port, out, concurrent):
        # --fork: one process per association, DCMTK's own way to serve several senders at once.
        fork = ["--fork"] if concurrent > 1 else []
        env = dict(os.environ, TCP_NODELAY="1") if self.nodelay else None
        return [STORESCP, *fork, "-pdu", str(PDU), "-od", str(out), str(port)], env

    def stored(self):
        return sum(1 for p in self.out.iterdir() if p.name.startswith("CT"))


class DicomRs(Server):
    def command(self, port, out, concurrent):
        # --non-blocking: the async server, one task per association.
        nb = ["--non-blocking"] if concurrent > 1 else []
        return [STORESCP_RS, *nb, "-m", str(PDU), "-p", str(port), "-o", str(out)], None

    def stored(self):
        return sum(1 for p in self.out.rglob("*.dcm"))


class Cacd(Server):
    def command(self, port, out, concurrent):
        status = free_port()
        self.status = status
        cfg = out / "cacd.toml"
        cfg.write_text(f"""
ae_title = "CACD"
listen = "127.0.0.1:{port}"
status = "127.0.0.1:{status}"
data_dir = "{out / 'data'}"
# Nothing is scored while the benchmark sends: it measures receiving alone.
quiet_period_s = 86400
accept_any = true
[receive]
max_pdu = {PDU}
max_associations = 16
min_free_bytes = 268435456
min_free_percent = 0.0
[health]
disk_warn_free_percent = 0.0
""")
        env = dict(os.environ, CACD_LOG="warn")
        return [CACD, "serve", "--config", str(cfg)], env

    def ready(self, port):
        # The listener is bound only after the database and model are ready, but wait for
        # /readyz anyway so no run pays start-up.
        import urllib.request
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.status}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("cacd never became ready")

    def stored(self):
        return sum(1 for p in (self.out / "data").rglob("*.dcm") if "studies" in p.parts)


def send(port, chunks):
    """storescu per chunk, all at once; returns wall seconds until the last exits."""
    t = time.perf_counter()
    # The sender at its best for every receiver: Nagle off (see Dcmtk).
    env = dict(os.environ, TCP_NODELAY="1")
    procs = [subprocess.Popen([STORESCU, "-aet", "CT01", "-aec", "CACD", "127.0.0.1", str(port), *map(str, c)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for c in chunks]
    errs = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t
    for p, e in zip(procs, errs):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {e.decode(errors='replace')[-400:]}")
    return dt


def loopback_gbytes_per_s():
    port = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "3", "-J"],
                             capture_output=True, check=True).stdout
    finally:
        srv.wait(10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / 1e9


def fsync_rate(files, folder, writers=1):
    """cacd's durability pattern per instance, with the study's own bytes: the disk's limit.
    With `writers` > 1 the study is split among that many threads writing at once (as
    concurrent associations do; the kernel may join their journal commits)."""
    from concurrent.futures import ThreadPoolExecutor
    folder.mkdir(parents=True)
    blobs = [f.read_bytes() for f in files]
    dfd = os.open(folder, os.O_RDONLY)

    def store(indices):
        for i in indices:
            tmp, final = folder / f".{i}.tmp", folder / f"{i}.dcm"
            with open(tmp, "wb") as fh:
                fh.write(blobs[i])
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, final)
            os.fsync(dfd)

    t = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(store, [range(w, len(blobs), writers) for w in range(writers)]))
    dt = time.perf_counter() - t
    os.close(dfd)
    shutil.rmtree(folder)
    return dt


def timed_writes(path, blobs, each):
    """Seconds to write `blobs` into one file and make them durable: one fdatasync per blob
    into space allocated beforehand (`each`), or one for all at the end."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if each:
            os.posix_fallocate(fd, 0, sum(len(b) for b in blobs))
            os.fsync(fd)
        t = time.perf_counter()
        for b in blobs:
            os.write(fd, b)
            if each:
                os.fdatasync(fd)
        os.fdatasync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)


def disk_rates(files, folder):
    """What the disk itself allows, below any file-per-instance design: (a) its sequential
    durable bandwidth (the whole study into one file, one fdatasync at the end) and (b) one
    fdatasync per instance into a preallocated file (a write-ahead log's best case: no file
    creation, no rename, no directory). Returns seconds for the study, (a) and (b)."""
    folder.mkdir(parents=True)
    blobs = [f.read_bytes() for f in files]
    rates = timed_writes(folder / "seq", blobs, False), timed_writes(folder / "log", blobs, True)
    shutil.rmtree(folder)
    return rates


def main():
    work = Path(tempfile.mkdtemp(prefix="cacd-bench-receive.", dir=os.environ.get("BENCH_DIR", "/tmp")))
    try:
        study = work / "study"
        subprocess.run([CACD, "phantom", "--out", str(study), "--seed", "424242", "--burden", "moderate",
                        "--thickness", "1.0", "--slices", str(SLICES), "--transfer-syntax", "explicit"],
                       check=True, stdout=subprocess.DEVNULL)
        files = sorted(p for p in study.rglob("*.dcm"))
        n, size = len(files), sum(p.stat().st_size for p in files)
        print(f"machine: {os.cpu_count()} cores, {cpu_model()}; data folder on {fs_of(work)}")
        print(f"study: {n} instances, {size / 1e6:.1f} MB (512x512, Explicit VR Little Endian); {RUNS} runs each; "
              f"max PDU {PDU} on every receiver")
        loop = [loopback_gbytes_per_s() for _ in range(3)]
        lm, llo, lhi = median_range(loop)
        print(f"limit: loopback TCP (iperf3, 3 s, 3 runs): median {lm:.2f} GB/s (min {llo:.2f}, max {lhi:.2f})"
              f" = {lm * 1e9 / (size / n):.0f} instances/s of this size")
        def limit(label, seconds):
            m, lo, hi = median_range(seconds)
            print(f"limit: {label}: median {n / m:.0f} instances/s (min {n / hi:.0f}, max {n / lo:.0f}),"
                  f" {size / m / 1e6:.0f} MB/s")

        for writers in (1, 8):
            limit(f"write+fsync+rename+fsync(dir) per instance, {writers} writer(s)",
                  [fsync_rate(files, work / f"fsync{writers}-{i}", writers) for i in range(RUNS)])
        disk = [disk_rates(files, work / f"disk{i}") for i in range(RUNS)]
        limit("disk, sequential, one fdatasync for the study", [d[0] for d in disk])
        limit("disk, one fdatasync per instance into a preallocated file", [d[1] for d in disk])
        servers = [Dcmtk("dcmtk-storescp", work, True), Dcmtk("dcmtk-default", work, False),
                   DicomRs("dicom-storescp", work), Cacd("cacd-serve", work)]
        table = []
        for concurrent in (1, 8):
            chunks = [files[i::concurrent] for i in range(concurrent)]
            times = {s.name: [] for s in servers}
            cpu = {s.name: [] for s in servers}
            # Interleave servers run by run so a slow period of the machine hits all of them.
            for r in range(RUNS):
                for s in servers:
                    port = free_port()
                    s.start(port, work / f"{s.name}-{concurrent}-{r}", concurrent)
                    try:
                        before = s.cpu_seconds()
                        dt = send(port, chunks)
                        got = s.stored()
                        time.sleep(0.3)  # let --fork children be reaped
                        cpu[s.name].append(s.cpu_seconds() - before)
                    finally:
                        s.stop()
                    if got != n:
                        raise RuntimeError(f"{s.name}: stored {got} of {n} instances")
                    times[s.name].append(dt)
                    shutil.rmtree(work / f"{s.name}-{concurrent}-{r}", ignore_errors=True)
            base = statistics.median(times["dcmtk-storescp"])
            for s in servers:
                m, lo, hi = median_range(times[s.name])
                cpu_ms = statistics.median(cpu[s.name]) * 1e3 / n
                table.append((concurrent, s.name, n / m, n / hi, n / lo, size / m / 1e6, base / m, cpu_ms))
        print()
        print(f"{'assocs':>6}  {'receiver':<16} {'inst/s median':>13} {'(min-max)':>13} {'MB/s':>7} {'vs DCMTK':>9}"
              f" {'CPU ms/inst':>12}")
        for c, name, ips, lo, hi, mbs, ratio, cpu_ms in table:
            print(f"{c:>6}  {name:<16} {ips:>13.0f} {f'({lo:.0f}-{hi:.0f})':>13} {mbs:>7.0f} {ratio:>8.2f}x"
                  f" {cpu_ms:>12.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def fs_of(path):
    out = subprocess.run(["df", "--output=source,fstype", str(path)], capture_output=True, text=True).stdout
    return " ".join(out.splitlines()[-1].split())


if __name__ == "__main__":
    sys.exit(main())
