"""
Fuzzing the web server over real sockets: a few hundred malformed requests (bad JSON, wrong
types, NaN and huge numbers, invalid UTF-8, deep nesting, oversized fields and heads, special-token
spellings in every text field, random bytes), each answered with a 4xx and a JSON error in the
one shape, while the server keeps serving; a valid request every so often proves it. Special
tokens typed into fields that take text (content, stop, a completion's prompt, the tokenizer's
text) are no error: those get a 200, and the prompt holds no special token the server did not put
there. The routes: chat completions, and (completions_and_tokenizer) /v1/completions, /tokenize,
/detokenize, /tokenizer_info and the tokenizer page.
"""
import json
import random
from collections import Counter

import requests

from nanochat.web import Limits
from test_chat_web import T, raw_exchange, start_server  # noqa: F401

KEY = "fuzz-key-0123456789abcdef"
AUTH = f"Authorization: Bearer {KEY}\r\n"
BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>", "<|python_start|>",
            "<|python_end|>", "<|output_start|>", "<|output_end|>"]
LIMITS = Limits(max_body_bytes=65536, max_header_bytes=8192, max_headers=32, request_timeout=5.0, max_message_chars=2000,
                max_total_chars=4000, max_per_client=1000, max_connections_per_client=1000)


def request(body, path="/v1/chat/completions", method="POST", headers=AUTH, content_type="application/json", length=None):
    """The bytes of one request: body (bytes, or an object made JSON) with its Content-Length unless length says otherwise."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    length = len(body) if length is None else length
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
    head += f"Content-Type: {content_type}\r\n" if content_type else ""
    head += f"Content-Length: {length}\r\n" if length != "none" else ""
    return head.encode("latin-1") + b"\r\n" + body


def with_field(name, value):
    return dict(BASE, **{name: value})


def raw_json(name, literal):
    """BASE with one field spelled as a raw JSON literal (NaN, 1e400, a 400-digit number...)."""
    return json.dumps(BASE)[:-1].encode() + f', "{name}": {literal}}}'.encode()


def bad_json():
    valid = json.dumps(with_field("temperature", 0.5)).encode()
    cases = [valid[:n] for n in (1, 5, 12, 30, len(valid) // 2, len(valid) - 1)]  # cut short
    cases += [valid + b"}", valid + b" x", b"", b" ", b"{", b"}", b"{'messages': []}", b'{"messages": [],}',
              b'{"messages": /* c */ []}', b'{messages: []}', b"\xef\xbb\xbf" + valid, b"null", b"true", b"5", b'"hi"',
              b"[]", b'[{"role": "user", "content": "hi"}]', b'{"a": 1}{"b": 2}', b'{"messages": [}', b"\x00" * 10]
    for name in ("temperature", "top_p", "top_k", "max_tokens", "seed", "n"):
        for literal in ("NaN", "Infinity", "-Infinity", "nan", "1" * 5000, "0x10", "+1", ".5", "1.", "01"):
            cases.append(raw_json(name, literal))
    return [("bad JSON", request(b), None) for b in cases]


WRONG = {  # field -> values that are wrong for it (values that are right, e.g. stream 0, are not here)
    "messages": [None, True, 0, "hi", [], {}, [1], [None], [[]], [{"role": "user"}], [{"role": "user", "content": None}],
                 [{"content": "hi"}], [{"role": 1, "content": "hi"}], [{"role": ["user"], "content": "hi"}],
                 [{"role": {"a": 1}, "content": "hi"}], [{"role": "user", "content": {"text": "hi"}}],
                 [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [{"type": "text", "text": 5}]}],
                 [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
                 [{"role": "user", "content": ["hi"]}], [{"role": "tool", "content": "hi"}], [{"role": "assistant", "content": "hi"}],
                 [{"role": "system", "content": "hi"}], [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                 [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
                 [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]],
    "model": [True, 0, 1.5, [], {}, "x" * 201, "gpt-4o", "sft/tiny/99", "sft/../x", "sft/tiny/5/extra", "sft/\x00",
              "sft/tiny/\u00b2", "sft/tiny/" + "9" * 13, "\ud800", "rl", "sft//5", "sft/.hidden", "/sft", "sft/tiny/-1"],
    "stream": ["true", 1, [1], {"a": 1}, "yes", 1.5],
    "stream_options": ["x", 1, [1], {"include_usage": "yes"}, {"include_usage": 1}, True],
    "n": [0, 2, -1, 1.5, "1", True, [], {}, 10 ** 400, -10 ** 400, 1e300],
    "max_tokens": [0, -1, 1.5, "5", True, [], {}, 10 ** 6, 10 ** 30, 1e300, 2 ** 63, 10 ** 400, -10 ** 400, 1e-300],
    "max_completion_tokens": [0, -1, 1.5, "5", True, [], 10 ** 400, 1e300],
    "temperature": [-0.1, 2.1, "0.5", True, [], {}, 10 ** 400, -10 ** 400, 1e300, -1e-300],
    "top_k": [-1, 1.5, "5", True, [], {}, -10 ** 400, 1e300],
    "top_p": [0, -0.1, 1.1, "0.9", True, [], {}, 10 ** 400, -10 ** 400, 1e300, 1e-400],
    "stop": [5, True, [5], [""], "", ["a"] * 5, ["x" * 201], {"a": 1}, [[]], [None], "\ud800", ["ok", "\udfff"]],
    "seed": ["1", 1.5, True, [], {}, 1e300],
}


def wrong_types():
    cases = []
    for name, values in WRONG.items():
        for v in values:
            body = json.dumps(with_field(name, v)).encode()
            if name == "messages" and v is None:
                body = json.dumps({"max_tokens": 1}).encode()
            cases.append((f"wrong {name}", request(body), name))
    return cases


def invalid_utf8():
    bodies = []
    for bad in (b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xfe\xff"):
        bodies.append(b'{"messages": [{"role": "user", "content": "hi' + bad + b'"}], "max_tokens": 1}')
        bodies.append(b'{"model": "sft' + bad + b'", "messages": [{"role": "user", "content": "hi"}]}')
    bodies.append('{"messages": [{"role": "user", "content": "hi"}]}'.encode("utf-16"))
    bodies.append(json.dumps(BASE).encode()[:-2] + b"\xe2\x82")  # cut inside a character
    cases = [("invalid UTF-8", request(b), None) for b in bodies]
    body = json.dumps(BASE).encode()
    cases += [("invalid UTF-8", request(body, path="/v1/chat/completions\xff"), None),
              ("invalid UTF-8", request(body, headers="Authorization: Bearer \xff\xfe\r\n"), None),
              ("invalid UTF-8", request(body, content_type="application/json\xff"), None),
              ("invalid UTF-8", request(body, headers=AUTH + "X-\xff: \xff\r\n", content_type="text/\xe9"), None)]
    return cases


def deep_nesting():
    cases = [b"[" * 60000, b"[" * 30000 + b"]" * 30000, b'{"a":' * 10000 + b"1" + b"}" * 10000,
             json.dumps(BASE).encode()[:-1] + b', "extra": ' + b"[" * 20000 + b"]" * 20000 + b"}"]
    nested = "hi"
    for _ in range(400):
        nested = [nested]
    cases += [json.dumps(with_field("messages", [{"role": "user", "content": nested}])).encode(),
              json.dumps(with_field("model", nested)).encode(), json.dumps(with_field("stop", nested)).encode(),
              json.dumps(with_field("stream_options", {"include_usage": nested})).encode()]
    return [("deep nesting", request(b), None) for b in cases]


def oversized():
    user = lambda text: {"role": "user", "content": text}
    many = [user("a") if i % 2 == 0 else {"role": "assistant", "content": "b"} for i in range(501)]
    bodies = [with_field("messages", [user("x" * 2001)]), with_field("messages", [user("x" * 1500), {"role": "assistant", "content": "y" * 1500},
                                                                                  user("z" * 1500)]),
              with_field("messages", many), with_field("model", "m" * 5000), with_field("stop", ["s" * 5000]),
              with_field("messages", [user([{"type": "text", "text": "x" * 1500}] * 2)])]
    cases = [("oversized field", request(b), None) for b in bodies]
    big = json.dumps(with_field("messages", [user("x" * 70000)])).encode()
    cases += [("oversized body", request(big), None), ("oversized body", request(b"{}", length=10 ** 15), None),
              ("oversized body", request(b"{}", length=int("9" * 30)), None),
              ("oversized head", request(BASE, headers=AUTH + "X-Big: " + "a" * 9000 + "\r\n"), None),
              ("oversized head", request(BASE, headers=AUTH + "".join(f"X-{i}: {i}\r\n" for i in range(40))), None),
              ("oversized head", request(BASE, path="/v1/chat/completions?" + "q" * 9000), None)]
    return cases


def framing():
    body = json.dumps(BASE).encode()
    cases = [request(body, length="none"), request(body, length="-1"), request(body, length="1e3"), request(body, length="\u00b2"),
             request(body, length=" "), request(body, length=f"{len(body)}, {len(body)}"), request(body, length=len(body) + 50),
             request(body, headers=AUTH + f"Content-Length: {len(body)}\r\n"),  # two Content-Length headers
             request(body, headers=AUTH + "Transfer-Encoding: chunked\r\n"), request(body, content_type=None),
             request(body, content_type="text/plain"), request(body, content_type="application/x-www-form-urlencoded"),
             request(body, headers=""), request(body, headers="Authorization: Bearer wrong\r\n"),
             request(body, headers="Authorization: Basic !!!\r\n"), request(body, headers=f"Authorization: {KEY}\r\n"),
             request(body, path="/v1/completions"), request(body, path="/v1/chat/completions/x"), request(body, method="PUT"),
             request(body, method="DELETE"), request(body, method="FOO"), request(body, method="OPTIONS"), request(body, method="G\x00T"),
             request(body, headers=AUTH + "Expect: 100-continue\r\n", length=len(body) + 1),
             b"POST /v1/chat/completions HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\n\r\n",  # no Host
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"GET /v1/models HTTP/x.y\r\n\r\n",
             b"GET /v1/models\r\n\r\n", b"POST /v1/chat/completions\r\n\r\n", b"\r\n\r\n", b" \r\n", b"GET\r\n\r\n",
             b"GET / HTTP/1.1 extra\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n" + b"x" * 100,
             b"GET /v1/models/" + b"%ff%fe%00" + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH.encode() + b"\r\n"]
    return [("framing", c, None) for c in cases]


PROMPT = {"prompt": "hi", "max_tokens": 1}
WRONG_COMPLETION = {  # /v1/completions: its own fields (the shared ones are fuzzed through chat above)
    "prompt": [None, True, 0, 1.5, [], {}, [[]], [None], [-1], [1.5], [True], ["a", [1]], [1, [2]], [[1], "a"], [{"a": 1}],
               [400], [10 ** 9], [2 ** 31], [[1], [-5]], [10 ** 400], ["a"] * 33, "x" * 4001, "\ud800", ["ok", "\udfff"],
               [1] * 2049],
    "echo": ["true", 1, [], {}, "yes"],
    "logprobs": [-1, 21, 1.5, "1", True, [], {}, 10 ** 400, 1e300],
    "best_of": [2, 0, "1", []],
    "suffix": ["x", 5, []],
    "max_tokens": [-1, 1.5, "0", 10 ** 6],
    "stream": ["yes", 1],
}


def completions_and_tokenizer():
    """Wrong fields for /v1/completions, /tokenize and /detokenize; the key on every new route."""
    cases = []
    for name, values in WRONG_COMPLETION.items():
        for v in values:
            cases.append((f"wrong {name}", request(dict(PROMPT, **{name: v}), path="/v1/completions"), name))
    cases.append(("wrong logprobs", request(dict(PROMPT, stream=True, logprobs=1), path="/v1/completions"), "logprobs"))
    cases.append(("wrong prompt", request({"max_tokens": 1}, path="/v1/completions"), "prompt"))
    for body, field in [({}, "text"), ({"text": None}, "text"), ({"text": 5}, "text"), ({"text": ["a"]}, "text"),
                        ({"text": "x" * 4001}, "text"), ({"text": "\ud800"}, "text"), ({"text": "a", "prompt": "a"}, "text"),
                        ({"prompt": 5}, "prompt"), ({"prompt": "a", "add_special_tokens": 1}, "add_special_tokens"),
                        ({"text": {"a": 1}}, "text")]:
        cases.append(("wrong tokenize", request(body, path="/tokenize"), field))
    for v in [None, 5, "1", [-1], [400], [1.5], [True], [[1]], [10 ** 400]]:
        cases.append(("wrong detokenize", request({"tokens": v}, path="/detokenize"), "tokens"))
    for path, body in [("/v1/completions", PROMPT), ("/tokenize", {"text": "hi"}), ("/detokenize", {"tokens": [72]})]:
        for headers in ("", "Authorization: Bearer wrong\r\n", "Authorization: Basic !!!\r\n"):
            cases.append(("framing", request(body, path=path, headers=headers), None))
        cases += [("framing", request(body, path=path, content_type="text/plain"), None),
                  ("framing", request(body, path=path, length="none"), None), ("bad JSON", request(b"{", path=path), None),
                  ("bad JSON", request(b"[1]", path=path), None), ("invalid UTF-8", request(b'{"text": "\xff"}', path=path), None)]
    for path in ("/tokenizer", "/tokenizer_info"):
        cases.append(("framing", request(b"", method="GET", path=path, headers="", content_type=None), None))
    return cases


def special_tokens():
    """(name, bytes, field, expect_ok): every special token spelled in every text field."""
    cases = []
    for sp in SPECIALS:
        text = f"a {sp} b{sp}"
        oks = {"content": with_field("messages", [{"role": "user", "content": text}]),
               "system content": with_field("messages", [{"role": "system", "content": text}, {"role": "user", "content": text}]),
               "assistant content": with_field("messages", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text},
                                                            {"role": "user", "content": text}]),
               "content part": with_field("messages", [{"role": "user", "content": [{"type": "text", "text": text}]}]),
               "stop": with_field("stop", [sp, text]),
               "stream_options key": with_field("stream_options", {sp: True})}
        for field, body in {"prompt": dict(PROMPT, prompt=text), "prompts": dict(PROMPT, prompt=[text, sp]),
                            "completion stop": dict(PROMPT, stop=[sp])}.items():
            cases.append((f"special token in {field}", request(body, path="/v1/completions", headers=AUTH + "Connection: close\r\n"),
                          field, True))
        cases.append(("special token in tokenize text", request({"text": text}, path="/tokenize",
                                                                headers=AUTH + "Connection: close\r\n"), "text", True))
        bads = {"role": with_field("messages", [{"role": sp, "content": "hi"}]),
                "model": with_field("model", sp), "model tag": with_field("model", f"sft/{sp}"),
                "part type": with_field("messages", [{"role": "user", "content": [{"type": sp, "text": "hi"}]}]),
                "stream": with_field("stream", sp), "seed": with_field("seed", sp), "temperature": with_field("temperature", sp)}
        for field, body in oks.items():
            cases.append((f"special token in {field}", request(body, headers=AUTH + "Connection: close\r\n"), field, True))
        for field, body in bads.items():
            cases.append((f"special token in {field}", request(body), field, False))
        cases.append(("special token in the path", request(b"", method="GET", path=f"/v1/models/{sp}", content_type=None), "path", False))
        cases.append(("special token in the key", request(BASE, headers=f"Authorization: Bearer {sp}\r\n"), "key", False))
    return cases


def random_bytes(rng):
    cases = []
    for _ in range(40):  # noise as the whole request
        cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
    for _ in range(20):  # a request line, then noise for headers
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500)))
        cases.append(b"POST /v1/chat/completions HTTP/1.1\r\n" + noise + b"\r\n\r\n")
    for _ in range(20):  # a good head, then a body of noise
        cases.append(request(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))))
    valid = json.dumps(with_field("stop", ["zz"])).encode()
    while len(cases) < 110:  # a good body with bytes changed, kept only if that makes it invalid JSON
        b = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            json.loads(bytes(b).decode("utf-8"), parse_constant=lambda c: 1 / 0)
        except (ValueError, ZeroDivisionError):
            cases.append(request(bytes(b)))
    return [("random bytes", c, None) for c in cases]


def test_fuzz(start_server, tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer, render_for_completion
    server, url = start_server(workers=1, limits=LIMITS, api_key=KEY)
    rng = random.Random(1234)
    cases = [(n, b, f, False) for n, b, f in bad_json() + wrong_types() + invalid_utf8() + deep_nesting() + oversized()
             + framing() + random_bytes(rng) + completions_and_tokenizer()] + special_tokens()
    rng.shuffle(cases)
    tok = get_tokenizer()
    specials = {tok.encode_special(s) for s in SPECIALS}
    tally, kinds, statuses, problems = Counter(), Counter(), Counter(), []
    for i, (name, data, field, expect_ok) in enumerate(cases):
        status, headers, body = raw_exchange(server.server_address, data, half_close=not expect_ok)
        statuses[status] += 1
        kinds[name.split(" in ")[0]] += 1
        if expect_ok:
            reply = json.loads(body) if status == 200 else None
            if reply is None:
                problems.append((name, status, body[:200]))
                continue
            sent = json.loads(data.split(b"\r\n\r\n", 1)[1])
            if "text" in sent or "prompt" in sent:  # the tokenizer, or a text completion: the text's tokens, nothing special
                texts = [sent["text"]] if "text" in sent else [sent["prompt"]] if isinstance(sent["prompt"], str) else sent["prompt"]
                ids = [t["id"] for t in reply["tokens"]] if "text" in sent else None
                count = reply["count"] if "text" in sent else reply["usage"]["prompt_tokens"]
                want = sum(len(tok.encode(t)) + ("prompt" in sent) for t in texts)  # a completion's prompt gets its <|bos|>
                if count != want or (ids is not None and (ids != tok.encode(texts[0]) or specials & set(ids))):
                    problems.append((name, "typed special tokens became special", count, want))
                tally["200 (text fields)"] += 1
                continue
            messages = sent["messages"]
            for m in messages:
                m["content"] = "".join(p["text"] for p in m["content"]) if isinstance(m["content"], list) else m["content"]
            ids = render_for_completion(tok, {"messages": messages})
            structure = 1 + 2 * len([m for m in messages if m["role"] != "system"]) + 1  # bos, starts/ends, assistant_start
            if reply["usage"]["prompt_tokens"] != len(ids) or sum(t in specials for t in ids) != structure:
                problems.append((name, "typed special tokens became special", reply["usage"]))
            tally["200 (text fields)"] += 1
            continue
        try:
            err = json.loads(body)["error"]
            shape_ok = isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str) and \
                set(err) == {"message", "type", "param", "code"}
        except (ValueError, KeyError, TypeError):
            shape_ok = False
        if status is None or not 400 <= status < 500 or not shape_ok or headers.get("content-type") != "application/json":
            problems.append((name, status, data[:120], body[:200]))
        elif field is not None and err["param"] is not None and not err["param"].startswith(field) and name.startswith("wrong"):
            problems.append((name, "param", err["param"], data[-120:]))
        else:
            tally["4xx JSON"] += 1
        if i % 40 == 0:  # the server keeps serving
            r = requests.post(url + "v1/chat/completions", json=dict(BASE, max_tokens=2), headers={"Authorization": f"Bearer {KEY}"}, timeout=T)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
            tally["valid in between"] += 1
    h = requests.get(url + "health", headers={"Authorization": f"Bearer {KEY}"}, timeout=T).json()
    summary = {"requests": len(cases), **tally, "statuses": dict(sorted(statuses.items(), key=str)), "kinds": dict(kinds),
               "5xx": sum(n for s, n in statuses.items() if s and s >= 500), "internal_errors": h["internal_errors"]}
    print("\nfuzz:", json.dumps(summary))
    assert not problems, problems[:10]
    assert len(cases) >= 300 and summary["5xx"] == 0 and h["internal_errors"] == 0
    assert h["busy"] == 0 and h["waiting"] == 0 and h["clients"] == 0
