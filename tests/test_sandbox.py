"""
nanochat.sandbox: each limit seen working on a real child process (timeouts, memory, output, files
outside the working directory, network, processes, the environment), and plain programs passing or failing.
Timeouts are generous where a program should finish: on a loaded 2-core machine a child may wait seconds for a CPU.
"""
import os
import signal
import socket
import subprocess
import sys

import pytest

from nanochat.common import UserError
from nanochat.sandbox import run_python

LONG = 60.0  # for programs that end by themselves


def test_a_correct_program_passes_and_a_wrong_one_fails():
    good = run_python("def square(x):\n    return x * x\nassert square(3) == 9\nprint('fine')", timeout=LONG)
    assert good.ok and good.returncode == 0 and good.stdout == "fine\n" and not good.timed_out
    bad = run_python("def square(x):\n    return x + x\nassert square(3) == 9", timeout=LONG)
    assert not bad.ok and bad.returncode == 1 and "AssertionError" in bad.stderr
    assert not run_python("raise SystemExit(3)", timeout=LONG).ok


def test_an_infinite_loop_is_killed_at_the_wall_clock_limit():
    r = run_python("while True:\n    pass", timeout=1.0)
    assert r.timed_out and not r.ok and r.returncode == -signal.SIGKILL and r.seconds >= 1.0
    # sleeping uses no CPU: only the wall clock stops it, and the whole process group goes
    r = run_python("import time\nprint('started', flush=True)\ntime.sleep(600)", timeout=1.0)
    assert r.timed_out and r.stdout == "started\n" and r.seconds < 60


@pytest.mark.slow
def test_the_cpu_limit_stops_a_busy_loop_first():
    r = run_python("while True:\n    pass", timeout=300, cpu_seconds=1)
    assert r.timed_out and r.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


def test_a_memory_hog_is_stopped():
    r = run_python("x = bytearray(1 << 30)\nprint('allocated')", memory_mb=256, timeout=LONG)
    assert not r.ok and r.memory_exceeded and "allocated" not in r.stdout
    r = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10 << 20))", memory_mb=256, timeout=LONG)
    assert not r.ok and r.memory_exceeded and not r.timed_out
    assert run_python("x = bytearray(16 << 20)", memory_mb=256, timeout=LONG).ok  # the limit, not a broken child


def test_a_huge_print_is_truncated():
    r = run_python("import sys\nsys.stdout.write('x' * 10_000_000)\nsys.stderr.write('e' * 50_000)", max_output=1000, timeout=LONG)
    assert r.ok and r.truncated and r.stdout == "x" * 1000 and r.stderr == "e" * 1000
    r = run_python("print('short')", max_output=1000, timeout=LONG)
    assert r.stdout == "short\n" and not r.truncated


def test_nothing_is_written_outside_its_temporary_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    for code in [f"open({str(outside)!r}, 'w').write('escaped')",
                 f"import os\nos.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)",
                 f"import pathlib\npathlib.Path({str(outside)!r}).write_text('escaped')",
                 "import os\nopen(os.path.join('..', 'escaped.txt'), 'w')",
                 f"import os\nos.symlink({str(outside)!r}, 'link')\nopen('link', 'w').write('escaped')",
                 f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.open('outside.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
                 f"import os\nos.mkdir({str(tmp_path / 'newdir')!r})"]:
        r = run_python(code, timeout=LONG)
        assert not r.ok and "PermissionError: sandbox:" in r.stderr, (code, r.stderr)
    assert sorted(os.listdir(tmp_path)) == []
    # inside its own directory (also its HOME and TMPDIR) it may write; the directory is gone afterwards
    r = run_python("import os, tempfile\nopen('a.txt', 'w').write('kept?')\nfd, path = tempfile.mkstemp()\n"
                   "os.mkdir('sub')\nos.rename('a.txt', 'sub/b.txt')\nprint(os.getcwd())\nprint(path)", timeout=LONG)
    assert r.ok, r.stderr
    cwd, tmp = r.stdout.split()
    assert cwd == r.workdir and tmp.startswith(r.workdir + "/") and not os.path.exists(r.workdir)


def test_a_file_larger_than_the_limit_cannot_be_written():
    r = run_python("open('big', 'wb').write(b'x' * (3 << 20))", max_file_mb=1, timeout=LONG)
    assert not r.ok and "File too large" in r.stderr


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=5)\nprint('connected')"
    try:
        # the same program outside the sandbox does connect: the refusal below is the sandbox's
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=LONG)
        assert plain.stdout == "connected\n"
        server.accept()[0].close()
        for c in [code, f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
                  "import socket\nsocket.gethostbyname('localhost')"]:
            r = run_python(c, timeout=LONG)
            assert not r.ok and "PermissionError: sandbox: socket." in r.stderr and "connected" not in r.stdout
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()  # nobody knocked
    finally:
        server.close()


def test_no_processes_no_ctypes_and_an_empty_environment(monkeypatch):
    for code in ["import os\nos.fork()", "import os\nos.system('true')", "import subprocess\nsubprocess.run(['true'])",
                 "import os\nos.execv('/bin/true', ['true'])", "import ctypes", "import os\nos.kill(os.getppid(), 0)"]:
        r = run_python(code, timeout=LONG)
        assert not r.ok and "PermissionError: sandbox:" in r.stderr, (code, r.stderr)
    monkeypatch.setenv("HF_TOKEN", "secret")
    r = run_python("import os, sys\nprint(sorted(os.environ))\nprint(sys.flags.isolated, sys.flags.no_site)", timeout=LONG)
    assert r.stdout.splitlines() == ["['HOME', 'LC_ALL', 'TMPDIR']", "1 1"]


def test_posix_only(monkeypatch):
    monkeypatch.setattr(os, "name", "nt")
    with pytest.raises(UserError, match="POSIX"):
        run_python("print(1)")
