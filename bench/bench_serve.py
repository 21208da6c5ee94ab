"""Load benchmark of `lmforge serve` classification: dynamic batching on and off, same model.

Starts `lmforge serve` on 127.0.0.1 twice (--max-batch-size N, then 1), drives each with a fixed
number of concurrent clients for a fixed time, and prints requests/s, p50/p99 latency, the error
count and the mean batch size. Every request goes the production path: key check, metering.

    .venv/bin/python bench/bench_serve.py                    # trains a default-size model first
    .venv/bin/python bench/bench_serve.py --bundle runs/x/model --clients 32 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

WORDS_POS = ["很好", "不错", "喜欢", "满意", "推荐", "物流很快", "质量很好", "性价比高"]
WORDS_NEG = ["很差", "失望", "难用", "退货", "垃圾", "做工粗糙", "客服不理", "发货太慢"]
FILLER = ["这个", "产品", "物流", "包装", "价格", "颜色", "尺寸", "用了几天", "总体来说", "朋友说"]


def review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["pos", "neg"])
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
    words.insert(rng.randint(0, len(words)), rng.choice(WORDS_POS if label == "pos" else WORDS_NEG))
    return "，".join(words), label


def train_bundle(directory: Path) -> Path:
    """A default-size lmforge encoder (d_model 256, 2 layers, max_length 128), briefly trained."""
    import csv

    import lmforge

    rng = random.Random(0)
    data = directory / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(review(rng) for _ in range(2000))
    cfg = {
        "data": {"path": str(data), "cache_dir": str(directory / "cache")},
        "train": {"max_steps": 60, "eval_every": 60},
        "eval": {"bootstrap": 0, "baselines": False},
    }
    return lmforge.train(cfg, out=directory / "bench", show_progress=False).bundle_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lmforge_cli(*args: str, db: str) -> str:
    command = [sys.executable, "-m", "lmforge", *args, "--db", db]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def start_server(bundle: Path, db: str, max_batch_size: int, max_wait_ms: float) -> tuple:
    port = free_port()
    command = [
        sys.executable, "-m", "lmforge", "serve", f"bench={bundle}", "--port", str(port),
        "--db", db, "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not become ready in 120 s")


async def client_loop(
    port: int, bodies: list[bytes], key: str, stop_at: float, seed: int, result: dict
) -> None:
    """One client on one keep-alive connection: a request, its whole answer, the next request.

    Plain HTTP/1.1 over asyncio streams: a load generator much lighter than an HTTP library, so
    on a small machine the CPU goes to the server being measured.
    """
    rng = random.Random(seed)
    head = (
        "POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: "
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            body = rng.choice(bodies)
            start = time.perf_counter()
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if status == 200:
                result["latencies"].append(time.perf_counter() - start)
            else:
                result["errors"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        result["errors"] += 1
    finally:
        writer.close()


async def drive(port: int, key: str, clients: int, seconds: float, texts: list[str]) -> dict:
    """`clients` concurrent clients, each one request at a time, until `seconds` have passed."""
    bodies = [json.dumps({"model": "bench", "input": text}).encode() for text in texts]
    result: dict = {"latencies": [], "errors": 0}
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(client_loop(port, bodies, key, stop_at, seed, result) for seed in range(clients))
    )
    result["elapsed"] = time.perf_counter() - started
    return result


def mean_batch_size(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = re.search(r'lmforge_batch_size_sum\{model="bench"\} (\S+)', text)
    count = re.search(r'lmforge_batch_size_count\{model="bench"\} (\S+)', text)
    return float(total.group(1)) / max(float(count.group(1)), 1.0) if total and count else 0.0


def run_mode(args: argparse.Namespace, bundle: Path, db: str, key: str, batch: int) -> dict:
    server, url = start_server(bundle, db, batch, args.max_wait_ms)
    try:
        texts = [review(random.Random(i))[0] for i in range(500)]
        port = int(url.rsplit(":", 1)[1])
        asyncio.run(drive(port, key, args.clients, args.warmup, texts))  # warm-up, not counted
        result = asyncio.run(drive(port, key, args.clients, args.seconds, texts))
        result["mean_batch"] = mean_batch_size(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    lat = sorted(result["latencies"])
    n = len(lat)
    return {
        "max_batch_size": batch,
        "requests": n,
        "rps": n / result["elapsed"],
        "p50_ms": 1000 * statistics.median(lat) if n else float("nan"),
        "p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))] if n else float("nan"),
        "errors": result["errors"],
        "mean_batch": result["mean_batch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per mode")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time per mode")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching-on setting")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-serve-") as tmp:
        tmp_dir = Path(tmp)
        db = f"sqlite:///{tmp_dir / 'bench.db'}"
        bundle = args.bundle or train_bundle(tmp_dir)
        key = lmforge_cli("keys", "create", "bench", db=db)
        rows = [
            run_mode(args, bundle, db, key, args.max_batch_size),
            run_mode(args, bundle, db, key, 1),
        ]
        (usage,) = json.loads(lmforge_cli("usage", "--json", db=db))

    print(f"\nlmforge serve, {args.clients} clients, {args.seconds:.0f} s per mode, model {bundle}")
    print(f"{'max batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'batch':>6}")
    for row in rows:
        print(
            f"{row['max_batch_size']:>9} {row['rps']:>8.1f} {row['p50_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f} {row['errors']:>6} {row['mean_batch']:>6.1f}"
        )
    print(f"batching speed-up: {rows[0]['rps'] / rows[1]['rps']:.2f}x requests/s")
    print(f"metered: {usage['requests']} requests (warm-ups included), {usage['errors']} errors")


if __name__ == "__main__":
    main()
