"""
Running untrusted Python (a model's HumanEval answer) in a child process that is held on a short leash.

    from nanochat.sandbox import run_python
    result = run_python("print(1 + 1)", timeout=5)
    result.ok, result.returncode, result.stdout          # True, 0, '2\\n'

What it does:
- `python -I -S -B` (isolated: no PYTHON* variables, no user or site packages, so only the
  standard library; no .pyc written) as a new process group, in a fresh temporary directory that
  is its working directory, HOME and TMPDIR, and that is removed afterwards; the environment
  holds nothing else. The program arrives on stdin, which is /dev/null by the time it runs.
- resource limits set in the child before the program runs: RLIMIT_AS (memory: an allocation
  past it raises MemoryError), RLIMIT_CPU, RLIMIT_FSIZE (a larger file write fails), RLIMIT_CORE 0,
  RLIMIT_NOFILE, and RLIMIT_NPROC 0 (no new processes or threads; the kernel ignores this one for
  root, and a platform that refuses a limit just runs without it).
- a wall-clock timeout after which the whole process group is killed (SIGKILL).
- stdout and stderr each kept up to max_output bytes (the rest is read and dropped; truncated says so).
- an audit hook (PEP 578), installed before the program runs, that refuses: every socket
  operation (creating, connecting, binding, sending, name lookups), starting processes (fork,
  exec, spawn, system, subprocess, killing), ctypes, importing _posixsubprocess / _ctypes,
  opening a file for writing (or a directory) outside the temporary directory (/dev/null
  excepted), and removing, renaming, linking, chmod/chown/utime of paths outside it; links and
  symlinks are refused everywhere, and so are the gc functions that could reach the hook's state.

What it does not do (it is not a security boundary against a determined adversary):
- no kernel isolation (no namespaces, seccomp, containers or separate user). The hook is Python
  code in the child's own process: a program written to defeat it (e.g. by replacing functions it
  relies on, or through a C extension of the standard library that makes a system call the hook
  never hears of) may succeed. It stops mistakes and naive attempts, which is what generated
  code does.
- reading is not restricted: the program can read any file the user running it can read, and
  print it (the output stays with the caller).
- the disk can still fill up with many files inside the temporary directory before the timeout
  (each one is at most max_file_mb); the child runs as the caller's user (root stays root).
POSIX only (Linux, macOS): elsewhere run_python raises a UserError.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from nanochat.common import UserError

# the child's side: limits, stdin, audit hook, then the program. It reads its settings from argv[1].
_BOOTSTRAP = r'''
import json, os, signal, sys
settings = json.loads(sys.argv[1])
try:
    import resource
    for name, value in settings["limits"].items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError, AttributeError):
            pass  # this platform refuses that limit: go on without it
except ImportError:
    pass
if hasattr(signal, "SIGXFSZ"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails instead of killing
source = sys.stdin.buffer.read().decode("utf-8", "replace")
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
sys.stdin = open(os.devnull)

def install(root):
    getcwd, fspath, stat, S_ISDIR = os.getcwd, os.fspath, os.stat, __import__("stat").S_ISDIR
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    DENY = ("socket.", "ctypes.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
            "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "os.symlink", "os.link",
            "gc.get_objects", "gc.get_referrers", "gc.get_referents")
    NO_IMPORT = frozenset(("_posixsubprocess", "_ctypes", "ctypes"))
    # audit event -> (positions of its path arguments, positions of its dir_fd arguments)
    PATHS = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
             "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
             "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.chflags": ((0,), ()),
             "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "os.mkfifo": ((0,), (2,)),
             "os.mknod": ((0,), (3,)), "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((1,), ()),
             "shutil.copymode": ((1,), ()), "shutil.copystat": ((1,), ()), "shutil.copytree": ((1,), ())}

    def resolve(path):
        path = fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                parts = parts[:-1]
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def inside(path, event=""):
        if isinstance(path, int):  # an fd: writable ones were opened through this hook, others may be outside
            return event == "os.truncate"
        p = resolve(path)
        return p == root or p.startswith(root + "/")

    def hook(event, args):
        if event.startswith(DENY):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in NO_IMPORT:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, flags = args[0], args[2] or 0
            if isinstance(path, int) or inside(path):
                return
            if resolve(path) == "/dev/null":
                return
            if flags & WRITE:
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
            try:
                is_dir = S_ISDIR(stat(path).st_mode)
            except (OSError, ValueError, TypeError):
                is_dir = False
            if is_dir:  # a directory fd would let os.open(..., dir_fd=) write anywhere unseen
                raise PermissionError(f"sandbox: opening a directory outside the working directory is not allowed: {path!r}")
        elif event in PATHS:
            paths, dir_fds = PATHS[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                raise PermissionError(f"sandbox: {event} with dir_fd is not allowed")
            for i in paths:
                if i < len(args) and not inside(args[i], event):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed: {args[i]!r}")

    sys.addaudithook(hook)

install(os.path.realpath(os.getcwd()))
del install
code = compile(source, "<program>", "exec")
del source, settings
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass
class Result:
    returncode: int          # the exit status; negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool          # killed at the wall-clock limit, or by the CPU limit
    memory_exceeded: bool    # a MemoryError ended it
    truncated: bool          # stdout or stderr was longer than max_output
    seconds: float
    workdir: str             # the temporary directory it ran in (gone by now)

    @property
    def ok(self):
        return self.returncode == 0 and not self.timed_out


def _reader(stream, limit, out):
    """Keep the first `limit` bytes of a pipe; read the rest and drop it, so the child never blocks on a full pipe."""
    kept, size = [], 0
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        if size < limit:
            kept.append(chunk[:limit - size])
        size += len(chunk)
    out.extend([b"".join(kept), size > limit])


def _feed(stream, data):
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, OSError):
        pass  # the child died before reading its program


def _wait(proc, deadline):
    """Wait for the child until the deadline without reaping it (the group stays ours to kill). True: it exited."""
    if not hasattr(os, "waitid"):  # macOS before Python 3.13
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    pause = 0.001
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)


def _limits(memory_mb, cpu_seconds, max_file_mb):
    limits = {"RLIMIT_CPU": cpu_seconds, "RLIMIT_FSIZE": max_file_mb << 20, "RLIMIT_CORE": 0,
              "RLIMIT_NOFILE": 64, "RLIMIT_NPROC": 0}
    if memory_mb:
        limits["RLIMIT_AS"] = memory_mb << 20
    return limits


def run_python(code, timeout=5.0, memory_mb=256, cpu_seconds=None, max_output=64 << 10, max_file_mb=16):
    """
    Run code (a str) in a sandboxed `python -I` child (see the module docstring) and return a
    Result. timeout: wall-clock seconds before the process group is killed; cpu_seconds: the CPU
    limit (default: the timeout rounded up, plus one); memory_mb: the address-space limit (0: none);
    max_output: bytes kept of stdout and of stderr; max_file_mb: the largest file it may write.
    """
    if os.name != "posix":
        raise UserError("nanochat.sandbox runs code only on POSIX systems (Linux, macOS): "
                        "evaluate HumanEval there, or leave it out (-a without HumanEval)")
    cpu_seconds = cpu_seconds or int(timeout) + 2
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="nanochat_sandbox_"))
    settings = json.dumps({"limits": _limits(memory_mb, cpu_seconds, max_file_mb)})
    env = {"HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8"}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP, settings], cwd=workdir, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
        outs = [[], []]
        threads = [threading.Thread(target=_reader, args=(s, max_output, o), daemon=True)
                   for s, o in zip((proc.stdout, proc.stderr), outs)]
        threads.append(threading.Thread(target=_feed, args=(proc.stdin, code.encode("utf-8", "replace")), daemon=True))
        for t in threads:
            t.start()
        exited = _wait(proc, t0 + timeout)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child (if still running) and anything it left behind
        except (ProcessLookupError, PermissionError):
            pass
        returncode = proc.wait()
        for t in threads:
            t.join(timeout=2.0)
        seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (stdout, out_cut), (stderr, err_cut) = [o if len(o) == 2 else [b"", False] for o in outs]
    stderr_text = stderr.decode("utf-8", "replace")
    cpu_killed = returncode in (-signal.SIGXCPU, -signal.SIGKILL) if exited else False
    return Result(returncode=returncode, stdout=stdout.decode("utf-8", "replace"), stderr=stderr_text,
                  timed_out=not exited or cpu_killed, memory_exceeded="MemoryError" in stderr_text[-2000:],
                  truncated=out_cut or err_cut, seconds=seconds, workdir=workdir)
