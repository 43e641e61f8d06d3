"""Drive the gateway with the official Anthropic Python SDK.

Usage: sdk_check.py BASE_URL API_KEY MODEL
Runs a non-streaming call, a streamed call (text + tool use), count_tokens
and models.list; prints one JSON object with what the SDK parsed. Any event
the SDK cannot parse raises, and the process exits non-zero.
"""
import json
import sys

import anthropic

base_url, api_key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)
tools = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}]
out = {}

msg = client.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": "hello"}])
out["create"] = {"text": msg.content[0].text, "stop_reason": msg.stop_reason, "input_tokens": msg.usage.input_tokens}

with client.messages.stream(model=model, max_tokens=256, tools=tools, messages=[{"role": "user", "content": "read /tmp/x"}]) as stream:
    kinds = [event.type for event in stream]
    final = stream.get_final_message()
out["stream"] = {
    "events": kinds,
    "blocks": [b.type for b in final.content],
    "text": "".join(b.text for b in final.content if b.type == "text"),
    "tool_input": [b.input for b in final.content if b.type == "tool_use"],
    "stop_reason": final.stop_reason,
    "output_tokens": final.usage.output_tokens,
}

count = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hello there"}])
out["count_tokens"] = count.input_tokens
out["models"] = [m.id for m in client.models.list(limit=100)]
print(json.dumps(out))
