#!/usr/bin/env python3
"""Fake model upstream for benches/soak.sh (Python 3 standard library only).

Speaks HTTP/1.1 with keep-alive on 127.0.0.1:PORT:

  POST /v1/messages                 Anthropic Messages: JSON, or SSE when the
                                    body has "stream": true (events a few ms
                                    apart, like a fast model)
  POST /slow/v1/messages            the same, but the SSE stream trickles one
                                    text delta every --trickle-interval
                                    seconds, --trickle-events times (the
                                    soak's long open streams)
  POST /oai/v1/chat/completions     OpenAI Chat Completions, JSON or SSE
                                    (translated by the gateway)
  GET  /health                      200, for readiness polls

Usage is realistic and deterministic: input tokens are the request body's
size / 4, cache reads and output tokens follow from a hash of the body. It
appears where the real APIs put it: `message_start` (input, cache, output 1)
and `message_delta` (final output) for Anthropic SSE; the final chunk for
OpenAI SSE. No `request-id` header is sent, so the gateway puts its own id on
every answer, and the soak driver can match each answer to its ledger row.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import zlib

WORDS = ("the quick brown fox jumps over a lazy dog while the gateway relays "
         "every byte and counts each token it sees on the way").split()


def usage_for(body: bytes):
    h = zlib.crc32(body)
    inp = max(1, len(body) // 4)
    cache_read = 1024 if h % 3 == 0 else 0
    cache_write = 256 if h % 5 == 0 else 0
    out = 8 + h % 40
    return inp, cache_read, cache_write, out


def text_of(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


class Upstream:
    def __init__(self, args):
        self.args = args
        self.seq = 0

    def msg_id(self):
        self.seq += 1
        return f"msg_soak_{os.getpid()}_{self.seq}"

    async def handle(self, reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await read_body(reader, headers)
                path = path.split("?", 1)[0]
                close = headers.get("connection", "").lower() == "close"
                if method == "GET" and path in ("/health", "/"):
                    await send_json(writer, 200, b'{"status":"ok"}')
                elif method == "POST" and path in ("/v1/messages", "/slow/v1/messages"):
                    await self.messages(writer, body, slow=path.startswith("/slow"))
                elif method == "POST" and path == "/oai/v1/chat/completions":
                    await self.chat(writer, body)
                else:
                    await send_json(writer, 404, b'{"type":"error","error":{"type":"not_found_error","message":"no such path"}}')
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def messages(self, writer, body, slow):
        try:
            req = json.loads(body)
        except ValueError:
            await send_json(writer, 400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad json"}}')
            return
        model = req.get("model", "claude-sonnet-4-5")
        inp, cr, cw, out = usage_for(body)
        mid = self.msg_id()
        if not req.get("stream"):
            msg = {"id": mid, "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": text_of(out)}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": inp, "output_tokens": out,
                             "cache_creation_input_tokens": cw, "cache_read_input_tokens": cr}}
            await send_json(writer, 200, json.dumps(msg).encode())
            return
        await start_stream(writer)
        start = {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "content": [], "model": model,
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": 1,
                      "cache_creation_input_tokens": cw, "cache_read_input_tokens": cr}}}
        await sse(writer, "message_start", start)
        await sse(writer, "content_block_start",
                  {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        await sse(writer, "ping", {"type": "ping"})
        if slow:
            n, gap = self.args.trickle_events, self.args.trickle_interval
        else:
            n, gap = 4, 0.003
        words = text_of(out).split(" ")
        per = max(1, len(words) // n)
        for i in range(n):
            part = " ".join(words[i * per:(i + 1) * per] if i < n - 1 else words[i * per:])
            await asyncio.sleep(gap)
            await sse(writer, "content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": part + " "}})
        await sse(writer, "content_block_stop", {"type": "content_block_stop", "index": 0})
        await sse(writer, "message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                            "usage": {"output_tokens": out}})
        await sse(writer, "message_stop", {"type": "message_stop"})
        await end_stream(writer)

    async def chat(self, writer, body):
        try:
            req = json.loads(body)
        except ValueError:
            await send_json(writer, 400, b'{"error":{"message":"bad json","type":"invalid_request_error"}}')
            return
        model = req.get("model", "gpt-4o")
        inp, cr, _cw, out = usage_for(body)
        cid = "chatcmpl-" + self.msg_id()
        usage = {"prompt_tokens": inp + cr, "completion_tokens": out, "total_tokens": inp + cr + out,
                 "prompt_tokens_details": {"cached_tokens": cr}}
        if not req.get("stream"):
            msg = {"id": cid, "object": "chat.completion", "created": 1763769600, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text_of(out)},
                                "finish_reason": "stop"}],
                   "usage": usage}
            await send_json(writer, 200, json.dumps(msg).encode())
            return
        await start_stream(writer)
        base = {"id": cid, "object": "chat.completion.chunk", "created": 1763769600, "model": model}
        await data(writer, dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]))
        words = text_of(out).split(" ")
        for i in range(0, len(words), 8):
            await asyncio.sleep(0.003)
            await data(writer, dict(base, choices=[{"index": 0, "delta": {"content": " ".join(words[i:i + 8]) + " "},
                                                    "finish_reason": None}]))
        await data(writer, dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        await data(writer, dict(base, choices=[], usage=usage))
        await chunk(writer, b"data: [DONE]\n\n")
        await end_stream(writer)


async def read_body(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    n = int(headers.get("content-length", "0"))
    return await reader.readexactly(n) if n else b""


async def send_json(writer, status, payload: bytes):
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()


async def start_stream(writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                 b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
    await writer.drain()


async def chunk(writer, payload: bytes):
    writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
    await writer.drain()


async def end_stream(writer):
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def sse(writer, event, obj):
    await chunk(writer, f"event: {event}\ndata: {json.dumps(obj, separators=(',', ':'))}\n\n".encode())


async def data(writer, obj):
    await chunk(writer, f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode())


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--trickle-events", type=int, default=12)
    p.add_argument("--trickle-interval", type=float, default=1.0)
    args = p.parse_args()
    up = Upstream(args)
    server = await asyncio.start_server(up.handle, "127.0.0.1", args.port, reuse_address=True,
                                        backlog=1024, limit=1 << 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
