"""Load benchmark of `lmforge serve`: batching on and off, same model, same run.

Starts `lmforge serve` on 127.0.0.1 twice (--max-batch-size N, then 1), drives each with a fixed
number of concurrent clients for a fixed time, and prints requests/s, p50/p99 latency, the error
count and the mean batch size. Every request goes the production path: key check, metering.

--task classification (the default): POST /v1/classify, one short review per request, dynamic
batching. --task generation: POST /v1/completions, a short prompt and --max-tokens new tokens
per request (sampled, temperature 0.8), continuous batching; also prints generated tokens/s. The
generation model has random weights (speed does not depend on them): GPT-2 124M's shape on a
GPU, a small shape on the CPU.

--overload F (classification): one server (batching on, --timeout-s 10, a queue bound too large
to matter, so that only the expected-wait rule sheds load): its capacity (requests/s) measured
closed-loop as above, then open-loop Poisson arrivals at F × that capacity for
--overload-seconds, then the capacity again (other processes on the machine move it); prints the
goodput (answers 200 per second, all of them and those within the timeout, as a share of each
capacity), latency of the 200s and 503s (from when each request was due), the count of each
status, and how many answers came only after the whole timeout. --texts-per-request N sends N
reviews per request: with 1, a small model on a small machine is bound by HTTP work, not the model.

    .venv/bin/python bench/bench_serve.py                    # trains a default-size model first
    .venv/bin/python bench/bench_serve.py --bundle runs/x/model --clients 32 --seconds 20
    .venv/bin/python bench/bench_serve.py --task generation --max-tokens 64
    .venv/bin/python bench/bench_serve.py --overload 2 --texts-per-request 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine
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


def random_gpt_bundle(directory: Path, gpu: bool) -> Path:
    """A generation bundle with random weights: GPT-2 124M's shape (context 1024) on a GPU,
    d_model 256 × 4 layers (context 256) on the CPU; a byte-level BPE of 8,000 tokens."""
    import torch

    from lmforge.bundle import save_bundle
    from lmforge.config import CleanConfig, GenerateConfig
    from lmforge.models import GPT, GPTConfig
    from lmforge.tokenization import train_tokenizer

    rng = random.Random(0)
    texts = ["".join(review(rng)[0]) + " the quick brown fox jumps" for _ in range(3000)]
    tokenizer = train_tokenizer(texts, "byte_bpe", 8000)
    shape = dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_length=1024) if gpu else \
        dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_length=256)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape))
    meta = {
        "task": "generation",
        "arch": "gpt",
        "text_column": "text",
        "clean": CleanConfig().model_dump(),
        "max_length": shape["max_length"],
        "generate": GenerateConfig().model_dump(),
        "architecture": model.config.to_dict(),
    }
    save_bundle(directory / "bench-gpt", model, tokenizer, meta)
    return directory / "bench-gpt"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lmforge_cli(*args: str, db: str) -> str:
    command = [sys.executable, "-m", "lmforge", *args, "--db", db]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def start_server(
    bundle: Path,
    db: str,
    max_batch_size: int,
    max_wait_ms: float,
    timeout_s: float = 300.0,
    max_queue: int = 1024,
) -> tuple:
    port = free_port()
    command = [
        sys.executable, "-m", "lmforge", "serve", f"bench={bundle}", "--port", str(port),
        "--db", db, "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
        "--timeout-s", str(timeout_s), "--max-queue", str(max_queue),
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


def request_head(path: str, key: str) -> bytes:
    """An HTTP/1.1 POST up to its Content-Length value: the body's length and the body follow."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: "
    ).encode()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection and read its whole answer: (status, body)."""
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def client_loop(
    port: int, path: str, bodies: list[bytes], key: str, stop_at: float, seed: int, result: dict
) -> None:
    """One client on one keep-alive connection: a request, its whole answer, the next request.

    Plain HTTP/1.1 over asyncio streams: a load generator much lighter than an HTTP library, so
    on a small machine the CPU goes to the server being measured.
    """
    rng = random.Random(seed)
    head = request_head(path, key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            status, reply = await exchange(reader, writer, head, rng.choice(bodies))
            if status == 200:
                result["latencies"].append(time.perf_counter() - start)
                if b'"completion_tokens"' in reply:
                    result["tokens"] += json.loads(reply)["usage"]["completion_tokens"]
            else:
                result["errors"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        result["errors"] += 1
    finally:
        writer.close()


def request_bodies(args: argparse.Namespace) -> tuple[str, list[bytes]]:
    """(path, bodies) of the requests the clients send, picked at random."""
    texts = [review(random.Random(i))[0] for i in range(500)]
    if args.task == "classification" and args.texts_per_request > 1:
        n = args.texts_per_request
        groups = [[texts[(i + j) % len(texts)] for j in range(n)] for i in range(len(texts))]
        return "/v1/classify", [json.dumps({"model": "bench", "input": g}).encode() for g in groups]
    if args.task == "classification":
        return "/v1/classify", [json.dumps({"model": "bench", "input": t}).encode() for t in texts]
    bodies = [
        json.dumps({"model": "bench", "prompt": text[:24], "max_tokens": args.max_tokens,
                    "temperature": 0.8}).encode()
        for text in texts
    ]
    return "/v1/completions", bodies


async def drive(
    port: int, key: str, clients: int, seconds: float, path: str, bodies: list[bytes]
) -> dict:
    """`clients` concurrent clients, each one request at a time, until `seconds` have passed."""
    result: dict = {"latencies": [], "errors": 0, "tokens": 0}
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(client_loop(port, path, bodies, key, stop_at, seed, result) for seed in range(clients))
    )
    result["elapsed"] = time.perf_counter() - started
    return result


async def open_loop_request(
    port: int, head: bytes, body: bytes, due: float, idle: list, result: dict
) -> None:
    """One request of the open loop, on an idle keep-alive connection or a new one; its latency
    counts from when it was due, so a load generator that falls behind is not hidden."""
    for reuse in (bool(idle), False):
        if reuse:
            reader, writer = idle.pop()
        else:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                result["statuses"]["no connection"] += 1
                return
        try:
            status, _ = await exchange(reader, writer, head, body)
            break
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            if not reuse:  # else the server had closed the idle connection: a new one
                result["statuses"]["broken connection"] += 1
                return
    result["statuses"][status] += 1
    result["latencies"][status].append(time.perf_counter() - due)
    idle.append((reader, writer))


async def open_loop(
    port: int, key: str, rate: float, seconds: float, path: str, bodies: list[bytes],
    timeout_s: float,
) -> dict:  # fmt: skip
    """Poisson arrivals at `rate` requests/s for `seconds`, however slowly the server answers;
    then up to the timeout (and a minute) for the answers still due."""
    rng = random.Random(0)
    result: dict = {"statuses": Counter(), "latencies": defaultdict(list), "sent": 0}
    idle: list = []
    pending: set[asyncio.Task] = set()
    head = request_head(path, key)
    started = time.perf_counter()
    due = started + rng.expovariate(rate)
    while due < started + seconds:
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        body = rng.choice(bodies)
        task = asyncio.create_task(open_loop_request(port, head, body, due, idle, result))
        pending.add(task)
        task.add_done_callback(pending.discard)
        result["sent"] += 1
        due += rng.expovariate(rate)
    if pending:
        await asyncio.wait(pending, timeout=timeout_s + 60)
    result["unanswered"] = len(pending)
    for _, writer in idle:
        writer.close()
    return result


def percentile_ms(latencies: list[float], share: float) -> float:
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux's /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_overload(args: argparse.Namespace, bundle: Path, db: str, key: str) -> dict:
    """Capacity closed-loop, open-loop arrivals at args.overload × capacity, capacity again;
    one server, with the CPU it got in each phase (other processes share the machine)."""
    server, url = start_server(
        bundle, db, args.max_batch_size, args.max_wait_ms, args.timeout_s, max_queue=1_000_000
    )
    cores: dict[str, float] = {}

    def phase(name: str, work: Coroutine) -> dict:
        cpu, started = cpu_seconds(server.pid), time.perf_counter()
        result = asyncio.run(work)
        cores[name] = (cpu_seconds(server.pid) - cpu) / (time.perf_counter() - started)
        return result

    try:
        path, bodies = request_bodies(args)
        port = int(url.rsplit(":", 1)[1])
        asyncio.run(drive(port, key, args.clients, args.warmup, path, bodies))  # not counted
        closed = phase("before", drive(port, key, args.clients, args.seconds, path, bodies))
        capacity = len(closed["latencies"]) / closed["elapsed"]
        rate = args.overload * capacity
        opened = phase(
            "overload",
            open_loop(port, key, rate, args.overload_seconds, path, bodies, args.timeout_s),
        )
        after = phase("after", drive(port, key, args.clients, args.seconds, path, bodies))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    latencies = opened["latencies"]
    every = [latency for times in latencies.values() for latency in times]
    return {
        "capacity": capacity,
        "capacity_after": len(after["latencies"]) / after["elapsed"],
        "server_cores": cores,
        "rate": rate,
        "sent": opened["sent"],
        "statuses": opened["statuses"],
        "goodput": len(latencies[200]) / args.overload_seconds,
        "goodput_in_time": sum(t < args.timeout_s for t in latencies[200]) / args.overload_seconds,
        "p50_ms": percentile_ms(latencies[200], 0.5),
        "p99_ms": percentile_ms(latencies[200], 0.99),
        "max_ms": 1000 * max(latencies[200], default=0.0),
        "p50_503_ms": percentile_ms(latencies[503], 0.5),
        "p99_503_ms": percentile_ms(latencies[503], 0.99),
        "late": sum(latency >= args.timeout_s for latency in every),
        "unanswered": opened["unanswered"],
    }


def print_overload(args: argparse.Namespace, row: dict, load: tuple) -> None:
    cores = row["server_cores"]
    print(f"\nlmforge serve under {args.overload:g}x overload, model {args.bundle or 'trained'}, "
          f"--timeout-s {args.timeout_s:g}, load average {load[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"capacity (closed loop, {args.clients} clients, {args.seconds:g} s): "
          f"{row['capacity']:.1f} requests/s before (server used {cores['before']:.2f} cores), "
          f"{row['capacity_after']:.1f} after ({cores['after']:.2f} cores)")
    print(f"offered (open loop, Poisson, {args.overload_seconds:g} s): {row['rate']:.1f} "
          f"requests/s, {row['sent']} sent (server used {cores['overload']:.2f} cores)")
    for name, goodput in (("", row["goodput"]), (", within the timeout", row["goodput_in_time"])):
        print(f"goodput{name}: {goodput:.1f} requests/s answered 200 = "
              f"{goodput / row['capacity']:.0%} of the capacity before, "
              f"{goodput / row['capacity_after']:.0%} of the capacity after")
    print(f"200 latency: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
          f"max {row['max_ms']:.1f} ms; 503 p50 {row['p50_503_ms']:.1f} ms, "
          f"p99 {row['p99_503_ms']:.1f} ms")
    counts = ", ".join(f"{status}: {n}" for status, n in sorted(row["statuses"].items(), key=str))
    print(f"statuses: {counts}; unanswered: {row['unanswered']}")
    print(f"answered only after the whole {args.timeout_s:g} s timeout: {row['late']}")


def mean_batch_size(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = re.search(r'lmforge_batch_size_sum\{model="bench"\} (\S+)', text)
    count = re.search(r'lmforge_batch_size_count\{model="bench"\} (\S+)', text)
    return float(total.group(1)) / max(float(count.group(1)), 1.0) if total and count else 0.0


def run_mode(
    args: argparse.Namespace, bundle: Path, db: str, key: str, batch: int,
    requests: tuple[str, list[bytes]] | None = None,
) -> dict:  # fmt: skip
    """One server at max batch `batch`, driven closed-loop; `requests` is (path, bodies), by
    default request_bodies(args)."""
    server, url = start_server(bundle, db, batch, args.max_wait_ms)
    try:
        path, bodies = requests or request_bodies(args)
        port = int(url.rsplit(":", 1)[1])
        asyncio.run(drive(port, key, args.clients, args.warmup, path, bodies))  # not counted
        result = asyncio.run(drive(port, key, args.clients, args.seconds, path, bodies))
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
        "tokens_per_s": result["tokens"] / result["elapsed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per mode")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time per mode")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching-on setting")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--task", choices=["classification", "generation"],
                        default="classification")
    parser.add_argument("--max-tokens", type=int, default=64, help="generation: new tokens")
    parser.add_argument("--texts-per-request", type=int, default=1, help="classification")
    parser.add_argument("--overload", type=float, help="open-loop load, times the capacity")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="server's, --overload")
    args = parser.parse_args()
    if args.overload and args.task != "classification":
        parser.error("--overload measures classification only")

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-serve-") as tmp:
        tmp_dir = Path(tmp)
        db = f"sqlite:///{tmp_dir / 'bench.db'}"
        if args.bundle:
            bundle = args.bundle
        elif args.task == "generation":
            import torch

            bundle = random_gpt_bundle(tmp_dir, torch.cuda.is_available())
        else:
            bundle = train_bundle(tmp_dir)
        key = lmforge_cli("keys", "create", "bench", db=db)
        if args.overload:
            load = os.getloadavg()
            print_overload(args, run_overload(args, bundle, db, key), load)
            return
        rows = [
            run_mode(args, bundle, db, key, args.max_batch_size),
            run_mode(args, bundle, db, key, 1),
        ]
        (usage,) = json.loads(lmforge_cli("usage", "--json", db=db))

    print(f"\nlmforge serve, {args.clients} clients, {args.seconds:.0f} s per mode, model {bundle}")
    generation = args.task == "generation"
    print(f"{'max batch':>9} {'req/s':>8} " + (f"{'tokens/s':>9} " if generation else "")
          + f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'batch':>6}")
    for row in rows:
        print(
            f"{row['max_batch_size']:>9} {row['rps']:>8.1f} "
            + (f"{row['tokens_per_s']:>9.0f} " if generation else "")
            + f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['errors']:>6} "
            f"{row['mean_batch']:>6.1f}"
        )
    print(f"batching speed-up: {rows[0]['rps'] / rows[1]['rps']:.2f}x requests/s")
    if generation:
        print(f"batching speed-up: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x "
              "generated tokens/s")
    print(f"metered: {usage['requests']} requests (warm-ups included), {usage['errors']} errors")


if __name__ == "__main__":
    main()
