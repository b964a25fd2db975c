"""Registry benchmark at a million registrations.

1. Loads 1,000,000 registrations into a fresh store (SQLite, or with ``--store postgresql`` a private
   PostgreSQL server started for the run, durable settings), in this process, through the store's batch
   upsert, tagged as the Cumulocity alarm app tags them;
   `severity:critical && (deviceId:all || deviceId:4711)` matches about 10% of them.
2. Starts the service on that store (its own process, real Mosquitto) and measures registration upserts/s
   over HTTP (`POST /v1/registrations`, admin key, keep-alive, concurrent clients).
3. Resolves the tag expression with the store's resolve (the code the target stage runs) on the service's
   database: time to the first batch and to the last; also the first page of the same audience over HTTP.
4. Reports the service's peak resident memory (VmHWM from /proc).
Usage: scripts/bench registry [--store sqlite|postgresql] [--registrations 1000000] [--upserts 30000]
       [--concurrency 64] [--db PATH (SQLite only)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from registrations.model import Audience, Registration
from registrations.pg_store import PgRegistrationStore
from registrations.sqlite_store import SqliteRegistrationDb, SqliteRegistrationStore
from registrations.store import RegistrationStore
from tests.pg_support import PostgresServer
from tests.support import Mosquitto, free_port, port_open

EXPRESSION = "severity:critical && (deviceId:all || deviceId:4711)"
SEVERITIES = ["critical", "major", "minor", "warning", "all"]
KEY = "bench-admin-key-" + "x" * 24


def apns_token(i: int) -> str:
    return f"{i:064x}"


def bench_tags(rng: random.Random) -> tuple[str, ...]:
    severity = SEVERITIES[rng.randrange(5)]  # 20% critical
    device = "deviceId:all" if rng.random() < 0.5 else f"deviceId:{rng.randrange(1, 2000)}"
    status = "status:active" if rng.random() < 0.7 else "status:all"
    return (f"severity:{severity}", device, status, "type:all")


def bench_registrations(first: int, last: int, rng: random.Random) -> list[Registration]:
    return [
        Registration(
            "apns" if i % 2 else "fcm",
            apns_token(i) if i % 2 else f"bench{i:08d}:APA91b{'x' * 40}",
            user_id=f"user{i % 250_000}",
            app="com.example.alarms",
            tags=bench_tags(rng),
        )
        for i in range(first, last)
    ]


def load(path: Path, n: int) -> float:
    rng = random.Random(1)
    store = SqliteRegistrationDb(path)
    store.db.execute("PRAGMA synchronous=OFF")  # bulk load only; the service writes with FULL
    start = time.perf_counter()
    batch = 20_000
    for first in range(0, n, batch):
        regs = bench_registrations(first, min(n, first + batch), rng)
        store.upsert_many(regs, time.time())
        print(f"\r  loaded {first + len(regs):,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return time.perf_counter() - start


async def load_postgresql(url: str, n: int) -> float:
    """The same registrations through the PostgreSQL store's batch upsert (which also creates the schema)."""
    rng = random.Random(1)
    store = PgRegistrationStore(url, pool_size=2)
    await store.open()
    start = time.perf_counter()
    batch = 20_000
    for first in range(0, n, batch):
        regs = bench_registrations(first, min(n, first + batch), rng)
        await store.upsert_many(regs, time.time())
        print(f"\r  loaded {first + len(regs):,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    async with store.pool.connection() as conn:
        await conn.execute("VACUUM ANALYZE")  # what autovacuum does after a bulk load, done now
    await store.close()
    return time.perf_counter() - start


async def open_bench_store(db: Path, url: str | None) -> RegistrationStore:
    if url is None:
        return SqliteRegistrationStore(db)
    store = PgRegistrationStore(url, pool_size=2)
    await store.open()
    return store


async def resolve_times(db: Path, url: str | None, rounds: int = 3) -> tuple[float, float, int, float]:
    """Median over ``rounds`` of (seconds to the first batch, seconds to the last, registrations, CPU
    seconds of this process during the resolve): on a busy machine the CPU time tells what an idle core
    would take (for PostgreSQL the server's share is not in it)."""
    results = []
    for _ in range(rounds):
        store = await open_bench_store(db, url)
        try:
            start, cpu = time.perf_counter(), time.process_time()
            first, total = 0.0, 0
            async for batch in store.resolve(Audience(expression=EXPRESSION)):
                if not first:
                    first = time.perf_counter() - start
                total += len(batch)
            results.append((first, time.perf_counter() - start, total, time.process_time() - cpu))
        finally:
            await store.close()
    results.sort(key=lambda r: r[1])
    return results[len(results) // 2]


class ServiceProcess:
    def __init__(self, workdir: Path, db: Path, broker_port: int, url: str | None = None) -> None:
        self.http_port = free_port()
        key_file = workdir / "admin.key"
        key_file.write_text(KEY)
        config = workdir / "tocsin.yaml"
        config.write_text(
            f"data_dir: {workdir / 'data'}\n"
            f"mqtt: {{port: {broker_port}, embedded_broker: never}}\n"
            f"http: {{port: {self.http_port}}}\n"
            f"registrations: {{path: {db}, seed: []}}\n"
            f"api: {{keys: [{{name: bench, role: admin, api_key_file: {key_file}}}]}}\n"
            "logging: {level: WARNING}\n" + (f"store: {{url: '{url}'}}\n" if url else "")
        )
        self.log = (workdir / "service.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(config)],
            stdout=self.log,
            stderr=self.log,
        )
        self.base = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}")
            if port_open(self.http_port):
                return
            time.sleep(0.05)
        raise RuntimeError("the service did not open its HTTP port within 60 s")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def upserts(base: str, count: int, concurrency: int, offset: int) -> float:
    """Registrations per second over HTTP: ``concurrency`` keep-alive connections, new tokens."""
    rng = random.Random(2)
    headers = {"Authorization": f"Bearer {KEY}"}
    bodies = [
        json.dumps(
            {
                "provider": "apns",
                "token": apns_token(offset + i),
                "app": "com.example.alarms",
                "user_id": f"user{i % 1000}",
                "tags": list(bench_tags(rng)),
            }
        ).encode()
        for i in range(count)
    ]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)
        failures: list[int] = []

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with http.post(
                    f"{base}/v1/registrations", data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status not in (200, 201):
                        failures.append(r.status)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} upserts failed, e.g. with {failures[0]}")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registrations", type=int, default=1_000_000)
    parser.add_argument("--upserts", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--db", type=Path, help="reuse this loaded SQLite database (kept); default: a fresh one"
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = parser.parse_args()
    if args.smoke:
        args.registrations, args.upserts, args.concurrency = 2000, 500, 8
    # Durable (fsync, synchronous commit) and with its working set in shared buffers, as a server sized
    # for a million registrations would be.
    server = PostgresServer(durable=True, shared_buffers="1GB") if args.store == "postgresql" else None
    url: str | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="tocsin-bench-registry-") as tmp:
            work = Path(tmp)
            db = args.db or work / "registry.db"
            if server is not None:
                server.start()
                url = server.create_database()
                print(f"loading {args.registrations:,} registrations into PostgreSQL ...", file=sys.stderr)
                took = asyncio.run(load_postgresql(url, args.registrations))
                print(f"loaded {args.registrations:,} registrations in {took:.0f} s (PostgreSQL)")
            elif not db.exists():
                print(f"loading {args.registrations:,} registrations ...", file=sys.stderr)
                took = load(db, args.registrations)
                size = db.stat().st_size / 2**20
                print(f"loaded {args.registrations:,} registrations in {took:.0f} s ({size:.0f} MB)")
            broker = Mosquitto(work / "broker")
            broker.start()
            service = ServiceProcess(work, db, broker.port, url)
            try:
                service.wait_ready()
                asyncio.run(upserts(service.base, 1000, args.concurrency, 10_000_000))  # warm-up
                ps = psutil.Process(service.proc.pid)
                cpu = ps.cpu_times()
                rate = asyncio.run(upserts(service.base, args.upserts, args.concurrency, 20_000_000))
                after = ps.cpu_times()
                per = (after.user + after.system - cpu.user - cpu.system) / args.upserts * 1000
                load_avg = os.getloadavg()[0]
                print(
                    f"upserts over HTTP ({args.store}, keep-alive, {args.concurrency} connections): "
                    f"{rate:,.0f}/s; service CPU {per:.2f} ms per upsert; "
                    f"load average {load_avg:.1f} on {os.cpu_count()} cores"
                )
                first, total_s, matched, cpu_s = asyncio.run(resolve_times(db, url))
                print(
                    f"resolve {EXPRESSION!r}: {matched:,} registrations; first batch {first * 1000:.1f} ms, "
                    f"all {total_s * 1000:.0f} ms, CPU {cpu_s * 1000:.0f} ms (median of 3, the store's "
                    f"resolve on the service's database; load average {os.getloadavg()[0]:.1f})"
                )
                rss = service.peak_rss_mb()
                print(f"service peak RSS (VmHWM): {rss:.0f} MB")
            finally:
                service.stop()
                broker.stop()
    finally:
        if server is not None:
            server.stop()
    print(
        json.dumps(
            {
                "upserts_per_s": round(rate),
                "first_batch_ms": round(first * 1000, 1),
                "resolve_all_ms": round(total_s * 1000),
                "peak_rss_mb": round(rss, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
