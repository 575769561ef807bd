"""`omnitune` commands in new processes that start with torch already imported.

Most CLI tests start `omnitune` many times, and each start used to spend about 3.5 s of a
CPU core importing torch before doing anything the test looks at (5.5 s with transformers and
peft, measured on 2 cores). A fork server imports torch once; every command is then a child
forked from it: a new process with its own pid, working directory, environment, stdin, stdout
and stderr, running the console script's own entry point (`omnitune.core.cli.main`) with the
test's arguments, and exiting with `main`'s exit status after the interpreter's atexit work.
What it imports beyond torch (transformers, huggingface_hub, omnitune itself) it imports in the
child, after the test's environment is in place, so settings read at import time
(HF_HUB_CACHE, TRANSFORMERS_VERBOSITY, HF_HUB_OFFLINE) are the test's, as in a fresh
interpreter.

Torch is safe to fork here because the server never runs an operator: no thread pool has
started. The server runs with OMP_WAIT_POLICY=PASSIVE (SERVER_ENV says why). What a forked
child cannot show is anything torch itself prints while it is imported;
tests that need a wholly fresh interpreter pass `fresh=True` to `run_cli`, and
`OMNITUNE_TEST_FRESH_PROCESSES=1` makes every call one (as before this server existed).

Protocol, over a Unix socket: the client sends one JSON message (argv, cwd, env) with the file
descriptors of the child's stdin, stdout and stderr attached (SCM_RIGHTS); the server forks and
answers with the child's pid; the child answers with its exit status when `main` returns. A
client that reads no status (the child was killed) reports -9, as subprocess would.

Shell sessions (the docs' console blocks) reach the same server through a shim: an `omnitune`
script first on their PATH (`write_shim`) that sends its own argv, directory, environment and
standard streams, relays SIGINT, SIGTERM and SIGHUP to the command's process group, and exits
with the command's status, or dies of the signal it relayed when the command did (otherwise
128 + 9: it was killed), as the console script would. A command that execs another program
(`omnitune dashboard` becomes Streamlit) is waited for until that program ends.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER_CODE = "import sys, tests.forkserver as f; f.serve(sys.argv[1])"
#: OpenMP threads that sleep at a barrier instead of spinning. A child forked from a process
#: that loaded libgomp spins its full count at every barrier even when the cores are shared
#: (libgomp's oversubscription check counts the threads it made before the fork): a 150-step
#: training run on 2 threads took 60 s beside one busy core, against 16 s in a new interpreter
#: and 7 s with passive waiting (measured 2026-12-07, 2 cores). Results are the same either way.
SERVER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def serve(path: str) -> None:
    """Import torch, then fork one child per request on the socket at `path`, forever."""
    # The whole point: imported once, before any fork. Torch, the compiler stack transformers
    # imports with it, and torchvision (its image utilities do): ~3.5 s, none of it reading the
    # environment a test sets. Each leaves torch's one extra (OpenMP) thread, which forks safely.
    import torch
    import torch._dynamo  # noqa: F401
    import torchvision  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(connection, json.loads(message), fds)
        for fd in fds:
            os.close(fd)
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        connection.close()


def _child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """Become the command: its session, streams, directory and environment; then run it."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command waits for its own children
        os.setsid()  # a timeout kills the command and whatever it started
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["omnitune", *request["argv"]]
        # The path a new interpreter would have: the script's folder first, then $PYTHONPATH
        # (a test's own modules, such as a reward function), then the venv's site-packages.
        extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
        sys.path[:1] = [os.path.dirname(sys.executable), *map(os.path.abspath, extra)]
        from omnitune.core.cli import main

        try:
            code = main(request["argv"])
        except SystemExit as exc:  # argparse's usage errors, as the console script would
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    except BaseException:  # an uncaught error: the traceback and status 1, as Python's own
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        # What an interpreter's exit does that a user could see: atexit handlers (logging's
        # flush among them) and the streams flushed; not the teardown of every module, which
        # with torch loaded costs more than the command (the client waits for the pid to be
        # gone before it reads the output).
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        connection.sendall(json.dumps({"status": code}).encode() + b"\n")
        os._exit(code & 0xFF)


#: The shim's code, after its `#!` line; SOCKET is filled in. Standard library only, run with
#: `python -S`: it starts in ~20 ms where the console script takes ~5 s to import torch.
SHIM = """
import json, os, signal, socket, sys, time

SOCKET = {socket!r}


def main():
    for fd in (0, 1, 2):  # a closed standard stream is /dev/null to the command
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(SOCKET)
    request = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
    socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
    reader = connection.makefile("r")
    pid = json.loads(reader.readline())["pid"]

    relayed = []

    def relay(signum, frame):
        relayed.append(signum)
        try:
            os.killpg(pid, signum)
        except OSError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, relay)
    line = reader.readline()
    # Gone, its files closed, before the shell goes on. No status: the command was killed, or
    # it exec'd another program (`omnitune dashboard` becomes Streamlit), which runs on under
    # the same pid and is waited for, signals still relayed to it.
    deadline = time.monotonic() + 10 if line else float("inf")
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.005 if line else 0.05)
    if line:
        return json.loads(line)["status"] & 0xFF
    if relayed:  # the command died of the signal it was sent (uvicorn re-raises it): so do we
        signal.signal(relayed[-1], signal.SIG_DFL)
        os.kill(os.getpid(), relayed[-1])
    return 128 + signal.SIGKILL


sys.exit(main())
"""


def write_shim(folder: Path, server: ForkServer) -> Path:
    """An `omnitune` executable in `folder` that runs each command through `server`."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "omnitune"
    shim.write_text(f"#!{sys.executable} -S\n" + SHIM.format(socket=server.path))
    shim.chmod(0o755)
    return shim


_shared: ForkServer | None = None


def shared() -> ForkServer:
    """The test process's one server, started on first use."""
    global _shared
    if _shared is None:
        _shared = ForkServer()
    return _shared


def fresh_processes() -> bool:
    """OMNITUNE_TEST_FRESH_PROCESSES=1: every command in a new interpreter, no server."""
    return os.environ.get("OMNITUNE_TEST_FRESH_PROCESSES") == "1"


class ForkServer:
    """The client side: one server per test process, started on first use."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="omnitune-forkserver-")
        self.path = os.path.join(self._folder, "socket")
        repo = Path(__file__).resolve().parent.parent
        self._process = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, self.path],
            cwd=repo,
            env={**os.environ, **SERVER_ENV},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("the test fork server did not start")
        atexit.register(self.close)

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        with (
            open(os.devnull) as stdin,
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection,
        ):
            connection.connect(self.path)
            message = json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode()
            socket.send_fds(connection, [message], [stdin.fileno(), out.fileno(), err.fileno()])
            reader = connection.makefile("r")
            pid = json.loads(reader.readline())["pid"]
            connection.settimeout(timeout)
            try:
                line = reader.readline()
            except TimeoutError:
                _kill_group(pid)
                raise subprocess.TimeoutExpired(["omnitune", *argv], timeout) from None
            status = json.loads(line)["status"] if line else -signal.SIGKILL
            _wait_gone(pid)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(
                ["omnitune", *argv],
                status,
                out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        with _suppress():
            os.unlink(self.path)
            os.rmdir(self._folder)


def _kill_group(pid: int) -> None:
    with _suppress():
        os.killpg(pid, signal.SIGKILL)


def _wait_gone(pid: int, seconds: float = 10) -> None:
    """The child has sent its status and is exiting: wait until it has (its files are closed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.005)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]
