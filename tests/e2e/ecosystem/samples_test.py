#!/usr/bin/env python3
"""n > 1 and best_of through the official `openai` package, on a real router +
prefill + decode cluster with the bundled model. The samples share one
prefill: the prefill node samples token #1 of each from the same logits, the
decode node forks the prompt's KV copy-on-write and decodes them side by side.
Checked: chat n=3 whole and streamed (choices 0..n-1, each with its own
finish_reason; the stream interleaves them by index and says the same as the
whole response), seeded requests reproduce, greedy samples are identical,
usage counts the prompt once and every generated token, completions best_of=3
returns the sample with the highest cumulative logprob (and bills all three,
as OpenAI does), response_format json_schema holds for every sample, and the
limits are 400s naming the parameter.
Exit 0: pass; 77: skipped (no model, no openai or jsonschema package)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdserve_procs import Cluster, check, common_args, fail, skip, stop_all  # noqa: E402

KEY = "sk-test-samples"
MODEL = "SmolLM2-135M-Instruct.Q4_1"

POINT = {
    "type": "object",
    "properties": {
        "x": {"type": "integer", "minimum": -99, "maximum": 99},
        "label": {"type": "string", "maxLength": 12},
    },
    "required": ["x", "label"],
    "additionalProperties": False,
}


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
    messages = [{"role": "user", "content": "Name a fruit and say why you like it."}]

    def chat(**kw):
        base = dict(model=MODEL, messages=messages, max_tokens=24, temperature=1.0, seed=7)
        base.update(kw)
        return client.chat.completions.create(**base)

    # Chat, n=3, whole: three choices, each its own finish; usage is the
    # prompt once and the sum of every sample's tokens (logprobs count them).
    one = chat(n=1)
    r = chat(n=3, logprobs=True)
    check([ch.index for ch in r.choices] == [0, 1, 2], f"n=3: choices 0..2 ({len(r.choices)})")
    for ch in r.choices:
        check(ch.finish_reason in ("stop", "length"),
              f"choice {ch.index}: finish {ch.finish_reason}: {ch.message.content!r}")
    n_tokens = [len(ch.logprobs.content) for ch in r.choices]
    check(r.usage.prompt_tokens == one.usage.prompt_tokens,
          f"usage: prompt counted once ({r.usage.prompt_tokens})")
    check(r.usage.completion_tokens == sum(n_tokens),
          f"usage: completion_tokens {r.usage.completion_tokens} = sum over samples {n_tokens}")
    check(r.choices[0].message.content == one.choices[0].message.content,
          "sample 0 of a seeded n=3 is the seeded n=1 answer")
    texts = [ch.message.content for ch in r.choices]
    check(len(set(texts)) > 1, f"seeded samples differ: {texts}")

    # Seeded: the same request gives the same samples.
    again = chat(n=3, logprobs=True)
    check([ch.message.content for ch in again.choices] == texts, "seeded n=3 reproduces")

    # Greedy: n identical samples (as vLLM gives).
    g = chat(n=2, temperature=0)
    check(g.choices[0].message.content == g.choices[1].message.content,
          f"greedy n=2: identical samples ({g.choices[0].message.content!r})")

    # Streamed: chunks interleave by index, each choice finishes once, and
    # the text per index is the whole response's.
    parts, finish, roles = {}, {}, {}
    usage = None
    for chunk in chat(n=3, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles[ch.index] = roles.get(ch.index, 0) + 1
            if ch.delta.content:
                parts[ch.index] = parts.get(ch.index, "") + ch.delta.content
            if ch.finish_reason:
                if ch.index in finish:
                    fail(f"stream: choice {ch.index} finished twice")
                finish[ch.index] = ch.finish_reason
    check(sorted(finish) == [0, 1, 2] and roles == {0: 1, 1: 1, 2: 1},
          f"stream: each choice opens once and finishes once ({finish})")
    check([parts.get(i, "") for i in range(3)] == texts,
          "stream: every choice's text equals the whole response's")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens,
          f"stream: usage {usage}")

    # Completions best_of=3, n=1: the sample with the highest cumulative
    # logprob among the three that n=3 (same seed) generates.
    prompt = "My favourite colour is"
    three = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=1.0,
                                      seed=3, n=3, logprobs=0)
    sums = [sum(ch.logprobs.token_logprobs) for ch in three.choices]
    best = max(range(3), key=lambda i: sums[i])
    b = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=1.0,
                                  seed=3, best_of=3)
    check(len(b.choices) == 1 and b.choices[0].index == 0, "best_of=3, n=1: one choice")
    check(b.choices[0].text == three.choices[best].text,
          f"best_of picks the most likely sample ({sums}): {b.choices[0].text!r}")
    check(b.usage.completion_tokens == three.usage.completion_tokens,
          f"best_of usage counts all 3 samples ({b.usage.completion_tokens})")
    check(b.choices[0].logprobs is None, "best_of: logprobs only when asked for")

    # Structured outputs: each sample has its own grammar state.
    js = chat(n=2, max_tokens=80, messages=[{"role": "user", "content": "A point as JSON."}],
              response_format={"type": "json_schema",
                               "json_schema": {"name": "point", "schema": POINT, "strict": True}})
    for ch in js.choices:
        try:
            jsonschema.validate(json.loads(ch.message.content), POINT)
        except (json.JSONDecodeError, jsonschema.ValidationError) as e:
            fail(f"json_schema n=2: choice {ch.index} is not valid ({e}): {ch.message.content!r}")
        check(ch.finish_reason == "stop", f"json_schema n=2: choice {ch.index} valid: "
              f"{ch.message.content}")

    # Limits: 400s that name the parameter.
    for kw, param in [(dict(n=17), "n"), (dict(n=0), "n")]:
        try:
            chat(**kw)
            fail(f"{kw} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == param, f"{kw}: 400 naming {param}")
    for kw in [dict(best_of=3, stream=True), dict(best_of=2, n=3)]:
        try:
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, **kw)
            fail(f"{kw} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == "best_of", f"completions {kw}: 400 naming best_of")
    stop_all()
    print("samples test: all checks passed")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
