"""The official Anthropic Python SDK against a gateway in front of a scripted
model (tests/support/model.rs), in any dialect.

Usage: sdk_conformance.py BASE_URL API_KEY MODEL
The key must have `rate_limit: {rpm: 2}`: two calls pass, the third is the
gateway's 429. Prints one JSON object with what the SDK parsed; any event
the SDK cannot parse raises, and the process exits non-zero.
"""
import json
import sys

import anthropic

base_url, api_key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)
tools = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}]
out = {}

msg = client.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": "Say pong."}])
out["create"] = {"text": "".join(b.text for b in msg.content if b.type == "text"), "stop_reason": msg.stop_reason}

with client.messages.stream(model=model, max_tokens=256, tools=tools,
                            messages=[{"role": "user", "content": "Please read the file /tmp/conformance.txt now."}]) as stream:
    kinds = sorted({event.type for event in stream})
    final = stream.get_final_message()
out["stream"] = {
    "events": kinds,
    "blocks": [b.type for b in final.content],
    "tool": [[b.name, b.input] for b in final.content if b.type == "tool_use"],
    "stop_reason": final.stop_reason,
    "output_tokens": final.usage.output_tokens,
}

out["count_tokens"] = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hello there"}]).input_tokens

try:
    client.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "Say pong."}])
    out["rate_limit"] = "not limited"
except anthropic.RateLimitError as e:
    out["rate_limit"] = {"class": type(e).__name__, "type": e.body["error"]["type"], "retry_after": e.response.headers.get("retry-after")}

try:
    anthropic.Anthropic(base_url=base_url, api_key="mg-not-a-key", max_retries=0).messages.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    out["auth"] = "accepted"
except anthropic.AuthenticationError as e:
    out["auth"] = {"class": type(e).__name__, "type": e.body["error"]["type"]}

print(json.dumps(out))
