#!/usr/bin/env python3
"""Load driver for benches/soak.sh (Python 3 standard library only).

Sends `/v1/messages` requests to the gateway for --duration seconds and
writes one JSON line per request to --out. It retries nothing: every failed
request is recorded as it happened, with its time window, so the report can
tell failures caused by an injected outage from the rest.

Two kinds of load run side by side:
- --workers short-request loops, paced together to about --rate requests/s,
  each on its own keep-alive connection (as Claude Code keeps one). Each
  request is, by weight, Anthropic JSON, Anthropic SSE, or the same two
  through an OpenAI-shaped upstream (translated by the gateway).
- --streams long streams, each held open by the upstream's trickle for
  its whole length; when one ends the next one starts at once, so that many
  are open throughout.

Each record: seq, kind, key, t0/t_head/t1 (Unix seconds: sent, response head,
done), status (0: no response head), request_id (the `request-id` header),
outcome (ok | http_error | stream_error | stream_incomplete | body_error |
transport | timeout), detail, reused (sent on a reused connection), usage
(input, output, cache read, cache write as the client saw it, or null).
"""

import argparse
import asyncio
import json
import random
import sys
import time
import uuid

KINDS = {
    # kind: (model, stream, weight)
    "json": ("claude-sonnet-4-5", False, 40),
    "sse": ("claude-sonnet-4-5", True, 40),
    "tr_json": ("claude-soak-translated", False, 10),
    "tr_sse": ("claude-soak-translated", True, 10),
}
LONG_MODEL = "claude-soak-slow"


class Transport(Exception):
    def __init__(self, phase, err):
        super().__init__(f"{phase}: {type(err).__name__}: {err}")
        self.phase = phase


class Conn:
    """One HTTP/1.1 client connection, reopened after a close."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None
        self.used = 0

    async def ensure(self):
        if self.writer is None or self.writer.is_closing() or self.reader.at_eof():
            self.close()
            try:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
            except OSError as e:
                raise Transport("connect", e)
            self.used = 0
        reused = self.used > 0
        self.used += 1
        return reused

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None


class Sse:
    """Incremental SSE reader: the events an Anthropic stream carries."""

    def __init__(self):
        self.buf = b""
        self.started = self.stopped = False
        self.error = None
        self.usage = [0, 0, 0, 0]  # input, output, cache read, cache write

    def feed(self, data: bytes):
        self.buf += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self.buf:
            block, self.buf = self.buf.split(b"\n\n", 1)
            event, payload = None, []
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    payload.append(line[5:].strip())
            if not payload:
                continue
            try:
                obj = json.loads(b"\n".join(payload))
            except ValueError:
                self.error = self.error or "unparseable SSE data"
                continue
            kind = obj.get("type", event)
            if kind == "message_start":
                self.started = True
                u = obj.get("message", {}).get("usage", {}) or {}
                self.usage = [u.get("input_tokens", 0) or 0, u.get("output_tokens", 0) or 0,
                              u.get("cache_read_input_tokens", 0) or 0, u.get("cache_creation_input_tokens", 0) or 0]
            elif kind == "message_delta":
                u = obj.get("usage", {}) or {}
                # message_delta usage is cumulative: later values replace earlier ones.
                for i, k in enumerate(("input_tokens", "output_tokens", "cache_read_input_tokens",
                                       "cache_creation_input_tokens")):
                    if u.get(k) is not None:
                        self.usage[i] = u[k]
            elif kind == "message_stop":
                self.stopped = True
            elif kind == "error":
                self.error = (obj.get("error") or {}).get("type", "error")


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader, headers, on_data):
    """Feed the body to on_data as it arrives; True when it ended cleanly."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return True
            on_data(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            on_data(await reader.readexactly(n))
        return True
    while True:  # close-delimited
        data = await reader.read(65536)
        if not data:
            return True
        on_data(data)


class Driver:
    def __init__(self, args):
        self.args = args
        self.host, port = args.url.rsplit(":", 1)
        self.port = int(port)
        self.keys = []
        with open(args.keys) as f:
            for line in f:
                if line.strip():
                    name, key = line.split()
                    self.keys.append((name, key))
        self.out = open(args.out, "w")
        self.seq = 0
        self.counts = {"sent": 0, "ok": 0, "failed": 0}
        self.deadline = 0.0
        self.kinds = list(KINDS)
        self.weights = [KINDS[k][2] for k in self.kinds]

    def body(self, model, stream, rng):
        # A few hundred bytes to a few KB of prompt, like short agent turns.
        filler = "Summarise the following notes. " + " ".join(
            rng.choice(("alpha", "beta", "gamma", "delta", "epsilon", "zeta")) for _ in range(rng.randint(20, 600)))
        return json.dumps({"model": model, "max_tokens": 512, "stream": stream,
                           "system": "You are a terse assistant.",
                           "messages": [{"role": "user", "content": filler}]}).encode()

    async def one(self, conn, kind, model, stream, key, session, rng, timeout):
        self.seq += 1
        rec = {"seq": self.seq, "kind": kind, "key": key[0], "t0": time.time(), "t_head": None, "t1": None,
               "status": 0, "request_id": None, "outcome": None, "detail": None, "reused": False, "usage": None}
        self.counts["sent"] += 1
        body = self.body(model, stream, rng)
        req = (f"POST /v1/messages HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
               f"content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
               f"x-api-key: {key[1]}\r\nx-claude-code-session-id: {session}\r\n"
               f"user-agent: modelgate-soak/1\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
        phase = "connect"
        try:
            async with asyncio.timeout(timeout):
                rec["reused"] = await conn.ensure()
                phase = "send"
                try:
                    conn.writer.write(req)
                    await conn.writer.drain()
                    phase = "head"
                    status, headers = await read_head(conn.reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                    raise Transport(phase, e)
                rec["t_head"] = time.time()
                rec["status"] = status
                rec["request_id"] = headers.get("request-id")
                phase = "body"
                is_sse = headers.get("content-type", "").startswith("text/event-stream")
                sse, raw = Sse(), []
                try:
                    await read_body(conn.reader, headers, sse.feed if is_sse else raw.append)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    rec["outcome"], rec["detail"] = ("stream_incomplete" if is_sse else "body_error"), \
                        f"{type(e).__name__}: {e}"
                    conn.close()
                    if is_sse:
                        rec["usage"] = sse.usage
                    return rec
                if headers.get("connection", "").lower() == "close":
                    conn.close()
                if status != 200:
                    rec["outcome"] = "http_error"
                    try:
                        err = json.loads(b"".join(raw) or b"{}").get("error", {})
                        rec["detail"] = f"{err.get('type')}: {str(err.get('message'))[:160]}"
                    except ValueError:
                        rec["detail"] = b"".join(raw)[:160].decode("latin-1")
                elif is_sse:
                    rec["usage"] = sse.usage
                    if sse.error:
                        rec["outcome"], rec["detail"] = "stream_error", sse.error
                    elif not (sse.started and sse.stopped):
                        rec["outcome"], rec["detail"] = "stream_incomplete", "ended without message_stop"
                    else:
                        rec["outcome"] = "ok"
                else:
                    try:
                        msg = json.loads(b"".join(raw))
                        u = msg["usage"]
                        rec["usage"] = [u.get("input_tokens", 0), u.get("output_tokens", 0),
                                        u.get("cache_read_input_tokens", 0) or 0,
                                        u.get("cache_creation_input_tokens", 0) or 0]
                        rec["outcome"] = "ok" if msg.get("type") == "message" else "body_error"
                        if rec["outcome"] != "ok":
                            rec["detail"] = "not a message"
                    except (ValueError, KeyError, TypeError, AttributeError) as e:
                        rec["outcome"], rec["detail"] = "body_error", f"{type(e).__name__}: {e}"
        except Transport as e:
            rec["outcome"], rec["detail"] = "transport", str(e)
            conn.close()
        except TimeoutError:
            rec["outcome"], rec["detail"] = "timeout", f"no end after {timeout:.0f}s (in {phase})"
            conn.close()
        finally:
            rec["t1"] = time.time()
            if rec["outcome"] == "ok":
                self.counts["ok"] += 1
            else:
                self.counts["failed"] += 1
            self.out.write(json.dumps(rec) + "\n")
        return rec

    async def worker(self, i):
        rng = random.Random(i)
        conn = Conn(self.host, self.port)
        key = self.keys[i % len(self.keys)]
        session = str(uuid.UUID(int=rng.getrandbits(128)))
        gap = self.args.workers / self.args.rate
        nxt = time.time() + rng.random() * gap
        while True:
            now = time.time()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            if time.time() >= self.deadline:
                break
            nxt = max(nxt + gap, time.time() - gap)  # catch up a little, never burst
            kind = rng.choices(self.kinds, self.weights)[0]
            model, stream, _ = KINDS[kind]
            await self.one(conn, kind, model, stream, key, session, rng, self.args.request_timeout)
        conn.close()

    async def long_stream(self, i):
        rng = random.Random(10_000 + i)
        conn = Conn(self.host, self.port)
        key = self.keys[(i + 1) % len(self.keys)]
        session = str(uuid.UUID(int=rng.getrandbits(128)))
        # Stagger the starts so the streams do not all end at once.
        await asyncio.sleep(rng.random() * self.args.stagger)
        while time.time() < self.deadline:
            rec = await self.one(conn, "long", LONG_MODEL, True, key, session, rng, self.args.long_timeout)
            if rec["outcome"] != "ok":
                await asyncio.sleep(1.0)  # a new stream, not a retry; do not spin while the upstream is down
        conn.close()

    async def progress(self):
        start = time.time()
        while time.time() < self.deadline:
            await asyncio.sleep(min(10, max(0.1, self.deadline - time.time())))
            print(f"driver: {time.time() - start:6.1f}s sent {self.counts['sent']} ok {self.counts['ok']} "
                  f"failed {self.counts['failed']}", file=sys.stderr, flush=True)

    async def run(self):
        self.deadline = time.time() + self.args.duration
        tasks = [asyncio.create_task(self.worker(i)) for i in range(self.args.workers)]
        tasks += [asyncio.create_task(self.long_stream(i)) for i in range(self.args.streams)]
        prog = asyncio.create_task(self.progress())
        await asyncio.gather(*tasks)
        prog.cancel()
        self.out.close()
        print(f"driver: done: sent {self.counts['sent']} ok {self.counts['ok']} failed {self.counts['failed']}",
              file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="host:port of the gateway")
    p.add_argument("--keys", required=True, help="file of `name key` lines")
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, required=True, help="seconds during which new requests start")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--rate", type=float, default=60.0, help="short requests per second, all workers together")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--stagger", type=float, default=10.0)
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--long-timeout", type=float, default=90.0)
    args = p.parse_args()
    if sys.version_info < (3, 11):
        sys.exit("driver.py needs Python 3.11 or newer (asyncio.timeout)")
    asyncio.run(Driver(args).run())


if __name__ == "__main__":
    main()
