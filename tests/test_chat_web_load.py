"""
A load test over real sockets: 50 clients, each from its own loopback address, stream replies at
the same time, one worker each; once every one of them is mid-stream, half hang up and the other
half read to the end. Afterwards every worker slot is free again, no client holds a share, no
connection is left open, and the server counts 25 completed and 25 disconnected.

So that all 50 start together (a thread start and a connect each take a while on 2 busy cores),
the test first holds every worker itself: the 50 requests line up in the queue, and are let go
at once.
"""
import contextlib
import http.client
import json
import socket
import threading
import time

import torch

from nanochat.web import ChatServer, Defaults, Limits, Worker, WorkerPool
from test_chat_web import T, next_event, wait_for

N = 50
STAYER_TOKENS = 100


def stream_client(address, i, barrier, results, errors):
    """Client i, from 127.0.0.(10+i): stream a reply, wait at the barrier once two pieces are in, then hang up
    (even i, asking for a reply to the context's end) or read to the end (odd i, STAYER_TOKENS)."""
    leaver = i % 2 == 0
    conn = http.client.HTTPConnection(*address, timeout=T, source_address=(f"127.0.0.{10 + i}", 0))
    try:
        body = {"messages": [{"role": "user", "content": f"Hello {i}"}], "stream": True, "seed": i,
                "max_tokens": 4000 if leaver else STAYER_TOKENS, "stream_options": {"include_usage": True}}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        pieces, usage, finish = 0, None, None
        while pieces < 2:  # mid-stream: two pieces of the reply in
            e = next_event(resp)
            assert isinstance(e, dict), e
            pieces += bool(e["choices"] and e["choices"][0]["delta"].get("content"))
        barrier.wait()  # every client is mid-stream now
        if leaver:
            conn.sock.shutdown(socket.SHUT_RDWR)  # hang up without a word
            results[i] = ("left", pieces)
            return
        while (e := next_event(resp)) not in (None, "[DONE]"):
            if e["choices"]:
                finish = e["choices"][0]["finish_reason"] or finish
            usage = e.get("usage") or usage
        results[i] = (e, finish, usage["completion_tokens"])
    except Exception as e:  # noqa: BLE001  (reported by the test)
        errors.append((i, repr(e)))
        barrier.abort()
    finally:
        conn.close()


def test_fifty_streaming_clients_half_hang_up(tiny_base_dir):
    t_start = time.monotonic()
    workers = [Worker(torch.device("cpu")) for _ in range(N)]
    for w in workers:
        w.get(("sft", "tiny", 5))  # loaded before the clients come
    pool = WorkerPool(workers, max_waiting=N)
    server = ChatServer(("127.0.0.1", 0), pool, ("sft", None, None), Limits(max_waiting=N, max_tokens=4000),
                        Defaults(max_tokens=16), quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    at_barrier = {}
    barrier = threading.Barrier(N, action=lambda: at_barrier.update(pool.state(), t=time.monotonic()), timeout=60)
    results, errors = {}, []

    try:
        with contextlib.ExitStack() as plug:  # every worker held: the clients wait in line
            for _ in range(N):
                plug.enter_context(pool.acquire(5, lambda: False, client="plug"))
            clients = [threading.Thread(target=stream_client, args=(server.server_address, i, barrier, results, errors))
                       for i in range(N)]
            for t in clients:
                t.start()
            wait_for(lambda: pool.state()["waiting"] == N, 30, "all 50 requests to wait")
            at_plug = pool.state()
            t_clients = time.monotonic()
        for t in clients:
            t.join(timeout=120)
        assert not errors, errors[:5]
        assert not any(t.is_alive() for t in clients)
        # all 50 were mid-stream at once (the barrier); the server may have finished a short reply or two that the
        # client had not read yet, but never a leaver's (up to the context's end)
        assert at_barrier["busy"] >= N // 2 and at_barrier["waiting"] == 0
        stayers = [r for i, r in results.items() if i % 2]
        leavers = [r for i, r in results.items() if i % 2 == 0]
        assert stayers == [("[DONE]", "length", STAYER_TOKENS)] * (N // 2)
        assert len(leavers) == N // 2 and all(r[0] == "left" for r in leavers)
        # afterwards: every worker slot free, no share held, no connection open
        wait_for(lambda: pool.state()["busy"] == 0, 10, "every worker to be given back")
        state = pool.state()
        assert at_plug["waiting"] == N and at_plug["busy"] == N and at_plug["clients"] == N + 1  # 50 clients and the plug
        assert state == {"workers": N, "busy": 0, "free": N, "waiting": 0, "clients": 0, "peak": 2 * N}, state
        wait_for(lambda: server.connection_state()["connections"] == 0, 10, "every connection to close")
        stats = dict(server.stats)
        assert stats["completed"] == N // 2 and stats["disconnected"] == N // 2
        assert stats["internal_errors"] == 0 and stats["errors"] == 0
        print(f"\nload: {N} clients streaming at once (busy {at_barrier['busy']} at the barrier, "
              f"{at_barrier['t'] - t_clients:.2f} s after they were let go), {stats['completed']} completed, "
              f"{stats['disconnected']} hung up mid-stream; after: {state['free']}/{state['workers']} workers free, "
              f"{state['waiting']} waiting, {server.connection_state()['connections']} connections; "
              f"{time.monotonic() - t_start:.1f} s in all")
    finally:
        server.shutdown()
        server.close()
        thread.join(timeout=10)
    assert not thread.is_alive()
