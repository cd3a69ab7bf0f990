"""Planning at corpus scale on a loopback S3 server (moto), with every request counted by a proxy in front of it.

For image corpora of N img2dataset-style tar shards (with and without img2dataset's metadata parquet beside
each), and for prompt files of 10^4..10^7 lines, it reports the planning time, the requests and bytes the
planner sent (by kind: tar GETs, other GETs, listings, HEADs) against the corpus size, and the driver's peak
Python allocation while planning (``tracemalloc``: what the driver holds, per unit or per record).

    python bench/planning.py --tars 10 100 1000 --samples 10 --prompts 10000 100000 1000000 10000000

Needs no network: moto runs as a subprocess on 127.0.0.1, the proxy in this process.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import io
import json
import random
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import webdataset as wds
from PIL import Image

from pipelines.readers import plan_images, plan_prompts

HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-length"}


class Counts:
    """Requests and response bytes seen by the proxy, by kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def add(self, kind: str, n: int) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.bytes[kind] += n

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()


def proxy(upstream: int, counts: Counts, port: int) -> ThreadingHTTPServer:
    """A counting HTTP proxy on ``port`` forwarding every request to ``127.0.0.1:upstream``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            if self.path in ("/__counts__", "/__reset__"):  # the bench asks the proxy process
                if self.path == "/__reset__":
                    counts.reset()
                data = json.dumps({"requests": counts.requests, "bytes": counts.bytes}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            path = urlsplit(self.path).path
            query = urlsplit(self.path).query
            if self.command == "GET" and path.endswith(".tar"):
                kind = "GET tar"
            elif self.command == "GET" and ("list-type" in query or path.count("/") <= 1):
                kind = "LIST"
            else:
                kind = f"{self.command} other"
            counts.add(kind, len(data))
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_HEADERS:
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def start_proxy(upstream: int) -> tuple[subprocess.Popen, int]:
    """The proxy in a process of its own (so the driver's measured memory is the planner's alone)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--proxy", str(upstream), str(port)])
    _wait_for(port)
    return proc, port


def proxy_counts(port: int, *, reset: bool = False) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/__reset__" if reset else "/__counts__")
    counts = json.loads(conn.getresponse().read())
    conn.close()
    return counts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int) -> None:
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def start_moto() -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(port)
    return proc, port


def noise_jpeg(rng: random.Random, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def img2dataset_shard(shard: int, samples: int, side: int, rng: random.Random) -> tuple[bytes, bytes]:
    """One tar in img2dataset's layout and its metadata parquet (all downloads successful)."""
    buffer = io.BytesIO()
    metas = []
    with wds.TarWriter(buffer) as tar:
        for i in range(samples):
            key = f"{shard:05d}{i:04d}"
            meta = {"url": f"http://x/{key}.jpg", "caption": f"caption {key}", "key": key, "status": "success",
                    "error_message": None, "width": side, "height": side}  # fmt: skip
            tar.write({"__key__": key, "jpg": noise_jpeg(rng, side), "txt": meta["caption"],
                       "json": json.dumps(meta, indent=4)})  # fmt: skip
            metas.append(meta)
    parquet = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(metas), parquet)
    return buffer.getvalue(), parquet.getvalue()


def upload(client, bucket: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def measure(plan, proxy_port: int) -> dict:
    proxy_counts(proxy_port, reset=True)
    tracemalloc.start()
    started = time.perf_counter()
    planned = plan()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    counts = proxy_counts(proxy_port)
    return {
        "seconds": round(seconds, 2),
        "records": planned.num_records,
        "units": planned.num_units,
        "requests": counts["requests"],
        "bytes": counts["bytes"],
        "driver_peak_mib": round(peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tars", type=int, nargs="*", default=[10, 100])
    parser.add_argument("--samples", type=int, default=10, help="samples per tar")
    parser.add_argument("--side", type=int, default=96, help="image side in px (noise JPEGs, ~20 KB at 96)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--prompts", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument(
        "--scan-max", type=int, default=10**9, help="plan without metadata up to this many tars"
    )
    parser.add_argument("--loose", type=int, default=0, help="also plan this many loose image objects")
    parser.add_argument("--proxy", type=int, nargs=2, metavar=("UPSTREAM", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        proxy(args.proxy[0], Counts(), args.proxy[1]).serve_forever()
        return

    moto, port = start_moto()
    proxy_proc, proxy_port = start_proxy(port)
    endpoint = f"http://127.0.0.1:{proxy_port}"
    options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        rng = random.Random(0)
        client.create_bucket(
            Bucket="warm-up"
        )  # the first plan pays Ray's and pyarrow's start-up: not measured
        tar, parquet = img2dataset_shard(0, 2, 16, rng)
        upload(client, "warm-up", {"a/00000.tar": tar, "a/00000.parquet": parquet, "a/00001.tar": tar})
        plan_images("s3://warm-up/a", unit_size=10, storage_options=options)
        for n in args.tars:
            bucket = f"tars-{n}"
            client.create_bucket(Bucket=bucket)
            objects, corpus = {}, 0
            for shard in range(n):
                tar, parquet = img2dataset_shard(shard, args.samples, args.side, rng)
                objects[f"with/{shard:05d}.tar"] = objects[f"without/{shard:05d}.tar"] = tar
                objects[f"with/{shard:05d}.parquet"] = parquet
                corpus += len(tar)
            upload(client, bucket, objects)
            for variant in ("with", "without") if n <= args.scan_max else ("with",):
                plan = functools.partial(
                    plan_images,
                    f"s3://{bucket}/{variant}",
                    unit_size=args.shard_size,
                    storage_options=options,
                )
                row = measure(plan, proxy_port)
                rows.append({"input": f"{n} tars {variant} metadata", "corpus_bytes": corpus, **row})
                print(json.dumps(rows[-1]), flush=True)
        for n in args.prompts:
            bucket = f"prompts-{n}"
            client.create_bucket(Bucket=bucket)
            data = "".join(f"a photo of thing number {i}\n" for i in range(n)).encode()
            client.put_object(Bucket=bucket, Key="p.txt", Body=data)
            plan = functools.partial(
                plan_prompts, f"s3://{bucket}/p.txt", unit_size=args.shard_size, storage_options=options
            )
            row = measure(plan, proxy_port)
            rows.append({"input": f"{n} prompt lines", "corpus_bytes": len(data), **row})
            print(json.dumps(rows[-1]), flush=True)
        if args.loose:
            bucket = "loose"
            client.create_bucket(Bucket=bucket)
            image = noise_jpeg(rng, 16)
            upload(client, bucket, {f"img/{i // 1000:03d}/{i:07d}.jpg": image for i in range(args.loose)})
            row = measure(
                lambda: plan_images(f"s3://{bucket}/img", unit_size=args.shard_size, storage_options=options),
                proxy_port,
            )
            rows.append(
                {"input": f"{args.loose} loose images", "corpus_bytes": len(image) * args.loose, **row}
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
        proxy_proc.terminate()
        moto.terminate()
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
