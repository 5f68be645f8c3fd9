"""Helpers shared by the tests: run a script on the CPU, read the numbers it prints, serve files like the hub."""
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomize_weights(model, proj_scale=16, scalars=(0.5, 1.5)):
    """Every weight random, in place (the real init zeroes the output projections and lm_head, which
    would make every logit equal): matrices N(0, 1/fan_in), output projections (c_proj) scaled by
    proj_scale so the blocks, not the token's own embedding, decide the next token; 1-D parameters
    (gains, lambdas) uniform in `scalars`. Uses the global torch RNG."""
    import math
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, (proj_scale if "c_proj" in name else 1) / math.sqrt(p.size(1)))
            else:
                p.uniform_(*scalars)
    return model


def run_script(base, module, *args, torchrun=False, check=True, timeout=300):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NANOCHAT_FAST_DECODE="0")
    cmd = [sys.executable, "-m", module, *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def step_losses(output):
    """{step: printed loss} of the training log lines."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^step (\d+)/\d+ \| loss: ([\d.]+)", output, re.M)}


def smooth_losses(output):
    """{step: printed smoothed loss}."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^step (\d+)/\d+ \| loss: [\d.]+ \| smooth: ([\d.]+)", output, re.M)}


def assert_kv_decoding_matches(model, idx):
    """Prefill 11 tokens, a chunk of 6, then one token at a time through the KV cache: the logits of a full forward.
    Returns the cache."""
    import torch
    B, T = idx.shape
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(B, T)
        pieces = [model(idx[:, :11], kv_cache=cache), model(idx[:, 11:17], kv_cache=cache)]
        pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(17, T)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == T
    return cache


class HubServer:
    """
    A local stand-in for huggingface.co on 127.0.0.1: serves root/<owner>/<name>/<revision>/<path> at
    /datasets/<owner>/<name>/resolve/<revision>/<path> and, for a model repo, /<owner>/<name>/resolve/<revision>/<path>
    (hub_path gives a file's place), honouring Range as the hub does (206, or 416 past the end). A model repo's file
    list is at /api/models/<owner>/<name>/revision/<revision> in the hub's shape: {"id", "sha", "siblings":
    [{"rfilename", "size"}]}, sizes only with ?blobs=true; listed_sizes[(repo, path)] overrides a listed size.
    A repo in `gated` needs its token: 401 without one (or for 'hf_expired'), 403 for any other.
    Records (path, Authorization) in requests, (path, Range) of ranged requests in ranges.
    """
    def __init__(self, root, gated=None):
        self.root, self.gated, self.requests, self.ranges, self.listed_sizes = str(root), gated or {}, [], [], {}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("Authorization")
                hub.requests.append((self.path, auth))
                path, _, query = self.path.partition("?")
                m = (re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path) or
                     re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path) or
                     re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path))
                if not m:
                    return self.send_error(404)
                repo, revision = m.group(1), unquote(m.group(2))
                if repo in hub.gated and auth != f"Bearer {hub.gated[repo]}":
                    return self.send_error(401 if auth in (None, "Bearer hf_expired") else 403)
                if path.startswith("/api/"):
                    return self.send_listing(repo, revision, "blobs=true" in query)
                file = hub_path(hub.root, repo, unquote(m.group(3)), revision)
                if not os.path.isfile(file):
                    return self.send_error(404)
                self.send_file(open(file, "rb").read())

            def send_file(self, body):
                start = 0
                if self.headers.get("Range"):
                    hub.ranges.append((self.path, self.headers["Range"]))
                    start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        return self.end_headers()
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def send_listing(self, repo, revision, blobs):
                folder = hub_path(hub.root, repo, "", revision)
                if not os.path.isdir(folder):
                    return self.send_error(404)
                siblings = []
                for dirpath, _, names in os.walk(folder):
                    for name in names:
                        rel = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
                        size = hub.listed_sizes.get((repo, rel), os.path.getsize(os.path.join(dirpath, name)))
                        siblings.append({"rfilename": rel, **({"size": size} if blobs else {})})
                body = json.dumps({"id": repo, "sha": "0" * 40, "siblings": sorted(siblings, key=lambda s: s["rfilename"])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def paths(self, repo):
        return [p for p, _ in self.requests if f"/datasets/{repo}/" in p]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def hub_path(root, repo, path, revision="main"):
    """Where HubServer(root) looks for a file of a repo (dataset or model)."""
    return os.path.join(str(root), repo, revision, path)
