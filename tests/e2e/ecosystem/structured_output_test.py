#!/usr/bin/env python3
"""Structured outputs (response_format json_object / json_schema) through the
official `openai` package, on a real router + prefill + decode cluster with
the bundled model. Token #1 is sampled on the prefill node and the rest on
the decode node, both under the grammar: every output must parse and
validate against its schema (the `jsonschema` package), streamed or not,
greedy or sampled, on /v1/chat/completions and /v1/completions. Bad schemas
are 400s naming the parameter.
Tools: tool_choice naming a function and "required" (constrained decoding:
the call is well-formed, its arguments validate against the tool's
parameters), streamed as OpenAI streams tool calls; "auto"; and a second
turn carrying the call and the tool's result.
Exit 0: pass; 77: skipped (no model, no openai or jsonschema package)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdserve_procs import Cluster, check, common_args, fail, skip, stop_all  # noqa: E402

KEY = "sk-test-json"
MODEL = "SmolLM2-135M-Instruct.Q4_1"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "student"],
    "additionalProperties": False,
}

ORDER = {
    "type": "object",
    "properties": {
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                   "minItems": 1, "maxItems": 3},
        "size": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 9}, {"type": "null"}]},
        "shape": {"const": "circle"},
    },
    "required": ["colors", "size", "shape"],
    "additionalProperties": False,
}


def fmt(name, schema, strict=True):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def main():
    args = common_args(sys.argv[1:])
    try:
        import jsonschema
        import openai
    except ImportError:
        skip("the openai and jsonschema packages are needed (scripts/install_deps.sh)")

    c = Cluster(args.pdserve, args.model, os.path.join(args.out_dir, "cluster"),
                extra=["--api-key", KEY])
    c.wait_ready()
    client = openai.OpenAI(base_url=c.url("/v1"), api_key=KEY, max_retries=0, timeout=120)

    def valid(text, schema, what):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{what}: output is not JSON ({e}): {text!r}")
        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            fail(f"{what}: output breaks the schema ({e.message}): {text!r}")
        return obj

    messages = [{"role": "user", "content": "Describe a person called Ann as JSON."}]

    # Chat, greedy, not streamed.
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                       max_tokens=200, response_format=fmt("person", PERSON))
    text = r.choices[0].message.content
    valid(text, PERSON, "chat json_schema")
    check(r.choices[0].finish_reason == "stop", f"chat json_schema validates, ends with stop: {text}")

    # The same request streamed: same text (greedy), token by token.
    parts, finish = [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                max_tokens=200, stream=True,
                                                response_format=fmt("person", PERSON)):
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    check("".join(parts) == text and finish == "stop",
          "streamed chat json_schema equals the non-streamed output")

    # Sampled (temperature 1, several seeds): masks must hold whatever is drawn.
    seen = set()
    for seed in range(6):
        r = client.chat.completions.create(
            model=MODEL, temperature=1.0, seed=seed, max_tokens=120,
            messages=[{"role": "user", "content": "Pick colors, a size and a shape."}],
            response_format=fmt("order", ORDER))
        out = r.choices[0].message.content
        valid(out, ORDER, f"sampled json_schema (seed {seed})")
        check(r.choices[0].finish_reason == "stop", f"sampled json_schema seed {seed}: {out}")
        seen.add(out)
    check(len(seen) > 1, f"sampling still varies under the grammar ({len(seen)} distinct outputs)")

    # json_object: any JSON object.
    r = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content":
                   "Give the capital of France as a JSON object with the key \"capital\"."}])
    out = r.choices[0].message.content
    obj = valid(out, {"type": "object"}, "json_object") if r.choices[0].finish_reason == "stop" \
        else None
    check(isinstance(obj, dict), f"json_object returns a JSON object: {out}")

    # /v1/completions (response_format as vLLM takes it), streamed.
    parts = []
    for chunk in client.completions.create(model=MODEL, prompt="A person as JSON:", temperature=0,
                                           max_tokens=200, stream=True,
                                           extra_body={"response_format": fmt("p", PERSON)}):
        parts.extend(ch.text for ch in chunk.choices)
    valid("".join(parts), PERSON, "completions json_schema (streamed)")
    check(True, f"completions json_schema streamed validates: {''.join(parts)}")

    # Bad schemas: 400 naming the parameter, the message says why.
    for schema, strict, says in [({"type": "banana"}, False, "invalid JSON schema"),
                                 ({"type": "object", "not": {"type": "null"}}, True, "not")]:
        try:
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5,
                                           response_format=fmt("bad", schema, strict))
            fail(f"schema {schema} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == "response_format.json_schema.schema"
                  and says in e.body.get("message", ""),
                  f"bad schema: 400 ({e.body.get('message')})")
    # Tools.
    tools = [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": False}}},
        {"type": "function", "function": {
            "name": "get_time", "description": "Current time in a timezone",
            "parameters": {"type": "object", "properties": {
                "timezone": {"type": "string", "maxLength": 30}},
                "required": ["timezone"], "additionalProperties": False}}},
    ]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]

    r = client.chat.completions.create(
        model=MODEL, messages=ask, tools=tools, temperature=0, max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    ch = r.choices[0]
    calls = ch.message.tool_calls or []
    check(ch.finish_reason == "tool_calls" and len(calls) == 1
          and calls[0].function.name == "get_weather" and calls[0].id.startswith("call_"),
          f"named tool_choice: one get_weather call ({ch.finish_reason}, {calls})")
    valid(calls[0].function.arguments, params["get_weather"], "named call's arguments")
    check(True, f"named call's arguments validate: {calls[0].function.arguments}")
    first_call = calls[0]

    acc, finish = {}, None
    for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
            tools=tools, tool_choice="required", temperature=0, max_tokens=100, stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            if c.delta.content:
                fail(f"required tool_choice streamed text: {c.delta.content!r}")
            for tc in c.delta.tool_calls or []:
                a = acc.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                a["id"] = tc.id or a["id"]
                if tc.function and tc.function.name:
                    a["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    a["arguments"] += tc.function.arguments
    check(finish == "tool_calls" and len(acc) == 1 and acc[0]["name"] in params
          and acc[0]["id"], f"required tool_choice, streamed: one call ({acc})")
    valid(acc[0]["arguments"], params[acc[0]["name"]], "streamed call's arguments")
    check(True, f"streamed call's arguments validate: {acc[0]}")

    r = client.chat.completions.create(model=MODEL, messages=ask, tools=tools, temperature=0,
                                       max_tokens=60)
    ch = r.choices[0]
    if ch.message.tool_calls:
        for tc in ch.message.tool_calls:
            valid(tc.function.arguments, {"type": "object"}, "auto call's arguments")
        check(ch.finish_reason == "tool_calls", "auto: the model called a tool")
    else:
        check(isinstance(ch.message.content, str), f"auto: the model answered in text: "
              f"{ch.message.content!r}")

    # The second turn: the call and its result go back through the template.
    r = client.chat.completions.create(
        model=MODEL, tools=tools, temperature=0, max_tokens=30,
        messages=ask + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": first_call.id, "type": "function",
                 "function": {"name": "get_weather", "arguments": first_call.function.arguments}}]},
            {"role": "tool", "tool_call_id": first_call.id, "content": "22 degrees, sunny"}])
    check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"),
          f"a turn with a tool result is served: {r.choices[0].message.content!r}")

    try:
        client.chat.completions.create(model=MODEL, messages=ask, tools=tools,
                                       tool_choice={"type": "function",
                                                    "function": {"name": "launch"}})
        fail("a tool_choice naming no tool was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "tool_choice", "tool_choice naming no tool: 400")
    stop_all()
    print("structured output test: all checks passed")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
