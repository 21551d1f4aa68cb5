"""A small HTTP/1.1 load generator: `concurrency` keep-alive connections, each sending its share
of `n` POSTs back to back. Raw asyncio streams, so the client costs little next to the server.
`python -m bench.http_load PORT PATH CONCURRENCY N BODY_JSON` prints {"rate", "errors", "p50_ms"}."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time


async def client(port: int, path: str, n: int, body: bytes, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        for _ in range(n):
            t = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            status = int(status_line.split()[1])
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()


async def main(port: int, path: str, concurrency: int, n: int, body: bytes) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    per = n // concurrency
    t = time.perf_counter()
    await asyncio.gather(*(client(port, path, per, body, latencies, errors) for _ in range(concurrency)))
    took = time.perf_counter() - t
    return {"rate": per * concurrency / took, "errors": len(errors),
            "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0}


if __name__ == "__main__":
    port, path, conc, n, body = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    print(json.dumps(asyncio.run(main(port, path, conc, n, body.encode()))))
