"""
The worker pool: generation workers lent out one request at a time, the queue of requests that
wait for one (bounded in length and in time), and each client's share of both (a client address
may have at most max_per_client requests running or waiting, so one client cannot take every slot).
"""
import queue
import threading
import time
from collections import Counter
from contextlib import contextmanager

from nanochat.web_request import ApiError, ClientGone


class WorkerPool:
    """Workers lent out one request at a time; the rest of the requests wait (up to a limit) in a queue."""
    def __init__(self, workers, max_waiting=32):
        self.workers = list(workers)
        self.free = queue.Queue()
        for w in self.workers:
            self.free.put(w)
        self.max_waiting = max_waiting
        self.lock = threading.Lock()
        self.waiting = 0
        self.busy = 0
        self.clients = Counter()  # client address -> its requests running or waiting
        self.peak = 0             # the most requests running or waiting at once, since the start

    def _admit(self, client, max_per_client):
        with self.lock:
            if max_per_client is not None and self.clients[client] >= max_per_client:
                raise ApiError(429, f"this client already has {self.clients[client]} requests running or waiting, "
                                    f"the most one client may; wait for one to finish", code="too_many_requests")
            if self.waiting >= self.max_waiting:
                raise ApiError(503, f"server busy: {self.waiting} requests are already waiting; try again later",
                               code="server_busy")
            self.waiting += 1
            self.clients[client] += 1
            self.peak = max(self.peak, self.waiting + self.busy)

    def _leave(self, client):
        with self.lock:
            self.clients[client] -= 1
            if self.clients[client] <= 0:
                del self.clients[client]

    def _wait(self, timeout, cancelled):
        """The next free worker (counted as busy); raises ApiError(503) past the timeout, ClientGone when cancelled()."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    worker = self.free.get(timeout=0.1)
                    break
                except queue.Empty:
                    if cancelled():
                        raise ClientGone() from None
                    if time.monotonic() > deadline:
                        raise ApiError(503, f"server busy: no worker free after {timeout:g} s; try again later",
                                       code="server_busy") from None
        except BaseException:
            with self.lock:
                self.waiting -= 1
            raise
        with self.lock:
            self.waiting -= 1
            self.busy += 1
        return worker

    @contextmanager
    def acquire(self, timeout, cancelled, client=None, max_per_client=None):
        """
        Lend a worker to one request of a client (its address), which may have at most max_per_client
        running or waiting (None: no limit). Raises ApiError: 429 when the client has its share
        already, 503 when the queue is full or too slow; ClientGone when cancelled().
        """
        self._admit(client, max_per_client)
        try:
            worker = self._wait(timeout, cancelled)
            try:
                yield worker
            finally:
                with self.lock:  # together, so that state() never sees a worker neither busy nor free
                    self.busy -= 1
                    self.free.put(worker)
        finally:
            self._leave(client)

    def state(self):
        """A snapshot for /health and tests: workers, busy, free, waiting, clients, peak."""
        with self.lock:
            return {"workers": len(self.workers), "busy": self.busy, "free": self.free.qsize(), "waiting": self.waiting,
                    "clients": len(self.clients), "peak": self.peak}
