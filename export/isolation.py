"""Native model work in a child process, so that a crash is an error and not a dead exporter.

OpenVINO, onnxruntime and NNCF run compiled kernels; a fault in one of them
(a segmentation fault, an illegal instruction) ends the whole Python process,
and with it every other bundle of the export, or a whole test session. The
exporter therefore builds each ONNX, OpenVINO and Jetson bundle in a worker:

    result = run_isolated(openvino_bundle, ctx, target, "int8", staging, what="openvino int8", log=print)

The worker is a fresh interpreter (multiprocessing's "spawn": a fork of an
exporter whose other thread is inside OpenVINO could inherit its locks held),
gets its arguments pickled, sends its log lines back as they come, and returns
its result or its exception. When it dies of a signal instead, the caller
gets a `NativeCrash`: one line naming the bundle, the signal, this CPU and its
int8 instructions, and what to try. A worker costs the imports it needs
(about 1 s for OpenVINO alone, 6 s once NNCF is imported, since NNCF imports
torch) on top of the work, against minutes of INT8 search.
"""
from __future__ import annotations

import multiprocessing
import signal
import traceback
from typing import Any, Callable

from edgederm.benchmarks.host import host_facts
from edgederm.errors import EdgeDermError

# OpenVINO's known crash: INT8 with a dynamic input dimension on AMX CPUs (upstream
# openvinotoolkit/openvino#37577). The export compiles static shapes now, so this is for what is left.
WORKAROUND = "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI (no AMX kernels)"


class NativeCrash(EdgeDermError):
    """A worker died inside native code: the bundle it built was not written."""


def run_isolated(function: Callable[..., Any], *args: Any, what: str, log: Callable[[str], None]) -> Any:
    """`function(*args, log=...)` in a child process: its return value, or its exception raised here.
    `function` and `args` must pickle (a module-level function, plain data); `what` names the work in a
    crash's message."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_worker, args=(sender, function, args), name=f"edgederm {what}")
    worker.start()
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
        worker.join()
    finally:
        if worker.is_alive():      # Ctrl-C or an error here: the worker's staged work is abandoned with it
            worker.terminate()
            worker.join()
        receiver.close()
    if outcome is None:
        raise NativeCrash(crash_message(what, worker.exitcode))
    kind, payload = outcome
    if kind == "error":
        raise payload
    return payload


def crash_message(what: str, exitcode: int | None) -> str:
    """One line: the work, how the worker died, this CPU and its int8 instructions, the workaround."""
    if exitcode is not None and exitcode < 0:
        try:
            died = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            died = f"was killed by signal {-exitcode}"
    else:
        died = f"exited with code {exitcode} before reporting"
    facts = host_facts()
    flags = ", ".join(facts["int8_instructions"]) or "none"
    return (f"{what}: the export worker {died} inside native code (OpenVINO, onnxruntime or NNCF); nothing of it "
            f"was written. CPU: {facts['cpu']} (int8 instructions: {flags}). On CPUs with AMX, retry with "
            f"{WORKAROUND} before the command")


def _worker(sender, function: Callable[..., Any], args: tuple) -> None:
    def log(line: str) -> None:
        sender.send(("log", line))

    try:
        result = ("done", function(*args, log=log))
    except BaseException as error:      # noqa: BLE001 - every failure goes back to the caller, Ctrl-C included
        result = ("error", _picklable(error))
    try:
        sender.send(result)
    finally:
        sender.close()


def _picklable(error: BaseException) -> BaseException:
    """The exception itself when it survives pickling (EdgeDermError does), else a RuntimeError with its
    traceback, so the caller still sees what failed."""
    import pickle
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:      # noqa: BLE001 - an exception type that does not pickle: any reason will do
        return RuntimeError("".join(traceback.format_exception(error)).rstrip())
