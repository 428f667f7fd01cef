#!/usr/bin/env python3
"""Renders the chat-template corpus with Python jinja2 exactly as Hugging Face
transformers does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, its tojson/raise_exception/strftime_now), and writes the
outputs as fixtures the C++ renderer is compared with byte for byte
(tests/unit/jinja/corpus_test.cc), so tests need no jinja2.

  tools/render_templates.py           rewrite tests/data/chat_templates/expected/
  tools/render_templates.py --check   exit 1 when the fixtures are not current

A fixture holds the rendered text, or for a template that refuses the
conversation, "!!RAISE!!\\n<message>" (raise_exception) or
"!!ERROR!!\\n<exception type>" (any other error).
"""
import argparse
import datetime
import json
import os
import sys

try:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("render_templates: jinja2 is not installed (pip install jinja2)", file=sys.stderr)
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "chat_templates")
# The fixed time strftime_now() formats; corpus_test.cc uses the same.
NOW = datetime.datetime(2024, 7, 26, 12, 30, 0, tzinfo=datetime.timezone.utc)
BOS, EOS = "<|bos|>", "<|eos|>"


class TemplateRaised(Exception):
    pass


class GenerationTracker(Extension):
    """transformers' {% generation %} tag; rendering passes the body through."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise TemplateRaised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, conv, add_generation_prompt, cache={}):
    try:
        if source not in cache:
            cache[source] = env.from_string(source)
        template = cache[source]
        kwargs = dict(conv.get("extra", {}))
        kwargs.update(bos_token=BOS, eos_token=EOS)
        return template.render(messages=conv["messages"], tools=conv.get("tools"), documents=None,
                               add_generation_prompt=add_generation_prompt, **kwargs)
    except TemplateRaised as e:
        return "!!RAISE!!\n" + str(e)
    except Exception as e:  # any other jinja2/Python error: the C++ side must fail too
        return "!!ERROR!!\n" + type(e).__name__


def fixtures():
    env = make_env()
    with open(os.path.join(DATA, "conversations.json"), encoding="utf-8") as f:
        conversations = json.load(f)
    out = {}
    for name in sorted(os.listdir(os.path.join(DATA, "templates"))):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(DATA, "templates", name), encoding="utf-8", newline="") as f:
            source = f.read()
        stem = name[: -len(".jinja")]
        for conv in conversations:
            for agp in (False, True):
                path = os.path.join(stem, "%s.agp%d.txt" % (conv["name"], int(agp)))
                out[path] = render(env, source, conv, agp)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    expected_dir = os.path.join(DATA, "expected")
    want = fixtures()
    stale = []
    for rel, text in sorted(want.items()):
        path = os.path.join(expected_dir, rel)
        if args.check:
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    if f.read() != text:
                        stale.append(rel)
            except FileNotFoundError:
                stale.append(rel + " (missing)")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
    if args.check:
        for rel in stale:
            print("stale fixture:", rel)
        if stale:
            print("render_templates: %d of %d fixtures are not current; run tools/render_templates.py"
                  % (len(stale), len(want)))
            return 1
        print("render_templates: %d fixtures current (jinja2 %s)" % (len(want), jinja2.__version__))
        return 0
    errors = sum(1 for t in want.values() if t.startswith("!!"))
    print("render_templates: wrote %d fixtures (%d are errors) with jinja2 %s"
          % (len(want), errors, jinja2.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
