"""Native model work in a child process, so that a crash is an error and not a dead exporter.

OpenVINO, onnxruntime and NNCF run compiled kernels; a fault in one of them
(a segmentation fault, an illegal instruction) ends the whole Python process,
and with it every other bundle of the export, or a whole test session. The
exporter therefore builds each ONNX, OpenVINO and Jetson bundle in a worker:

    result = run_isolated(openvino_bundle, ctx, target, "int8", staging, what="openvino int8", log=print)

Workers come from multiprocessing's "forkserver": a clean server process,
started once per exporter process (`start_workers`), imports what the bundle
functions need once (PRELOAD: OpenVINO, onnxruntime, onnx, NNCF, which
imports torch: about 6 s) and forks a worker per bundle from that state in
milliseconds. Not a plain fork of the exporter: its other target thread may
be inside OpenVINO holding a lock at that moment, and a forked child would
inherit the lock held forever. Not "spawn": a fresh interpreter per bundle
paid those imports again each time (2-6 s a bundle; the test suite's
exports took minutes longer). Where forkserver does not exist (Windows),
spawn it is. Arguments are pickled; the worker sends its log lines back as
they come and then its result or its exception (a result that does not
pickle comes back as an error). When it dies of a signal instead, the caller
gets a `NativeCrash`: one line naming the bundle, the signal and its usual
cause: SIGKILL is most often the out-of-memory killer; SIGSEGV, SIGILL and
the other faults are a crash in native code, with this CPU, its int8
instructions and what to try. A worker that has reported but does not exit
is terminated after EXIT_TIMEOUT_S; its result stands.
"""
from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from typing import Any, Callable

from edgederm.benchmarks.host import host_facts
from edgederm.errors import EdgeDermError

# OpenVINO's known crash: INT8 with a dynamic input dimension on AMX CPUs (upstream
# openvinotoolkit/openvino#37577). The export compiles static shapes now, so this is for what is left.
WORKAROUND = "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI (no AMX kernels)"
# What the workers import, loaded once in the forkserver (the format functions' module and NNCF).
PRELOAD = ["edgederm.export.bundles", "nncf"]
EXIT_TIMEOUT_S = 30.0     # how long a worker that has reported may take to exit before it is terminated


class NativeCrash(EdgeDermError):
    """A worker died inside native code: the bundle it built was not written."""


def run_isolated(function: Callable[..., Any], *args: Any, what: str, log: Callable[[str], None]) -> Any:
    """`function(*args, log=...)` in a child process: its return value, or its exception raised here.
    `function` and `args` must pickle (a module-level function, plain data); `what` names the work in a
    crash's message."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_worker, args=(sender, function, args), name=f"edgederm {what}")
    try:
        worker.start()
    except BaseException:
        receiver.close()           # no worker holds either end: close both, or each failed start leaks two
        sender.close()
        raise
    sender.close()                 # the worker holds the only writer: its death ends the parent's reads
    outcome = None
    try:
        while outcome is None:
            try:
                kind, payload = receiver.recv()
            except EOFError:
                break
            if kind == "log":
                log(payload)
            else:
                outcome = (kind, payload)
        # it has reported (or closed its end): what is left is the interpreter's exit, which a native
        # library's exit handler can hang; the result is in hand either way
        worker.join(timeout=EXIT_TIMEOUT_S)
    finally:
        if worker.is_alive():      # Ctrl-C, an error here, or a worker that hangs on exit: abandoned
            worker.terminate()
            worker.join(timeout=EXIT_TIMEOUT_S)
            if worker.is_alive():
                worker.kill()
                worker.join()
        receiver.close()
    if outcome is None:
        raise NativeCrash(crash_message(what, worker.exitcode))
    kind, payload = outcome
    if kind == "error":
        raise payload
    return payload


def start_workers() -> None:
    """Start the worker server now, so its imports overlap the caller's own preparation (the exporter
    loads the model and the splits meanwhile). Harmless to call again."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver
        forkserver.ensure_running()


def _context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


# What a signal that ends a worker usually means. SIGKILL is not a fault of the code that ran: the kernel's
# out-of-memory killer sends it, as does `kill -9`; the AMX workaround would send the user the wrong way.
NATIVE_FAULTS = (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT)


def crash_message(what: str, exitcode: int | None) -> str:
    """One line: the work, how the worker died and its usual cause; for a native fault, this CPU, its int8
    instructions and the workaround."""
    number = -exitcode if exitcode is not None and exitcode < 0 else None
    try:
        name = None if number is None else signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGKILL:
        return (f"{what}: the export worker was killed by SIGKILL, most often the system running out of memory "
                "(see `dmesg` for the out-of-memory killer), or someone killing it; nothing of it was written. "
                "Free memory, export fewer targets at once, or use a smaller --calibration-cases")
    if number is None or number not in NATIVE_FAULTS:
        died = (f"was killed by {name}" if number is not None
                else f"exited with code {exitcode} before reporting")
        return (f"{what}: the export worker {died}; nothing of it was written. No native fault was reported: "
                "look above for what stopped it")
    facts = host_facts()
    flags = ", ".join(facts["int8_instructions"]) or "none"
    return (f"{what}: the export worker was killed by {name} inside native code (OpenVINO, onnxruntime or NNCF); "
            f"nothing of it was written. CPU: {facts['cpu']} (int8 instructions: {flags}). On CPUs with AMX, "
            f"retry with {WORKAROUND} before the command")


def _worker(sender, function: Callable[..., Any], args: tuple) -> None:
    def log(line: str) -> None:
        sender.send(("log", line))

    try:
        result = ("done", function(*args, log=log))
    except BaseException as error:      # noqa: BLE001 - every failure goes back to the caller, Ctrl-C included
        result = ("error", _picklable(error))
    try:
        try:
            sender.send(result)
        except Exception as error:      # noqa: BLE001 - a result that does not pickle is the function's error
            sender.send(("error", RuntimeError(f"the worker's result could not be sent back: "
                                               f"{type(error).__name__}: {error}")))
    finally:
        sender.close()


def _picklable(error: BaseException) -> BaseException:
    """The exception itself when it survives pickling (EdgeDermError does), else a RuntimeError with its
    traceback, so the caller still sees what failed."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:      # noqa: BLE001 - an exception type that does not pickle: any reason will do
        return RuntimeError("".join(traceback.format_exception(error)).rstrip())
