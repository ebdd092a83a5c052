"""Native work in export workers (export/isolation.py): results, logs and errors come back; a worker
killed by a signal is a one-line error; an export loses only the bundle whose worker died; a test
session survives a crash inside a fixture; and what the export scores is what the runtime runs."""
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgederm.benchmarks.host import host_facts
from edgederm.cli import app
from edgederm.errors import ConfigError
from edgederm.export.isolation import WORKAROUND, NativeCrash, run_isolated
from edgederm.runtime.bundle import read_manifest
from tests.helpers import add, kill_self, raise_config_error, report_then_hang, segfault_on_int8, unpicklable_result

ROOT = Path(__file__).resolve().parents[1]


def test_a_worker_returns_its_result_and_its_log_lines():
    lines = []
    assert run_isolated(add, 2, 3, what="adding", log=lines.append) == 5
    assert lines == ["adding 2 and 3"]


def test_a_worker_error_is_raised_in_the_caller():
    with pytest.raises(ConfigError, match="^bad setting$"):
        run_isolated(raise_config_error, "bad setting", what="failing", log=print)


@pytest.mark.parametrize("signal_number", [signal.SIGSEGV, signal.SIGILL, signal.SIGABRT])
def test_a_worker_killed_by_a_signal_is_a_one_line_error(signal_number):
    with pytest.raises(NativeCrash) as caught:
        run_isolated(kill_self, signal_number, what="openvino int8 bundle", log=print)
    message = str(caught.value)
    facts = host_facts()
    assert "\n" not in message
    assert message.startswith(f"openvino int8 bundle: the export worker was killed by {signal_number.name}")
    assert f"CPU: {facts['cpu']} (int8 instructions: {', '.join(facts['int8_instructions']) or 'none'})" in message
    assert WORKAROUND in message and "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" in message


def test_a_worker_killed_by_sigkill_is_named_as_out_of_memory_not_as_a_native_crash():
    with pytest.raises(NativeCrash) as caught:
        run_isolated(kill_self, signal.SIGKILL, what="openvino int8 bundle", log=print)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("openvino int8 bundle: the export worker was killed by SIGKILL")
    assert "out of memory" in message and WORKAROUND not in message


def test_a_result_that_cannot_be_sent_back_is_an_error_not_a_crash():
    with pytest.raises(RuntimeError, match="result could not be sent back") as caught:
        run_isolated(unpicklable_result, what="pickling", log=print)
    assert not isinstance(caught.value, NativeCrash)


def test_a_worker_that_hangs_after_reporting_is_ended_and_its_result_kept(monkeypatch):
    import time

    import edgederm.export.isolation as isolation
    monkeypatch.setattr(isolation, "EXIT_TIMEOUT_S", 1.0)
    started = time.perf_counter()
    assert run_isolated(report_then_hang, what="hanging", log=print) == "reported"
    assert time.perf_counter() - started < 30


def test_a_worker_that_cannot_start_leaks_no_pipe(monkeypatch):
    import os

    import edgederm.export.isolation as isolation
    context = isolation._context()

    def failing_start(self):
        raise OSError("no processes left")
    monkeypatch.setattr(type(context.Process(target=print)), "start", failing_start)
    before, caught = len(os.listdir("/proc/self/fd")), []
    for _ in range(3):     # the errors are kept, as a caller that reports them keeps their tracebacks (and frames)
        with pytest.raises(OSError, match="no processes left") as error:
            run_isolated(add, 1, 2, what="adding", log=print)
        caught.append(error)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_crashed_int8_bundle_is_an_error_and_the_other_bundles_are_written(trained_run, synthetic_release,
                                                                             tmp_path, monkeypatch):
    import edgederm.export.exporter as exporter
    monkeypatch.setitem(exporter.FORMAT_FUNCTIONS, "openvino", segfault_on_int8)
    out = tmp_path / "exports"
    result = CliRunner().invoke(app, ["export", "--run", str(trained_run), "--target", "openvino", "--precision",
                                      "fp32,int8", "--data", str(synthetic_release), "--out", str(out),
                                      "--max-auc-drop", "50", "--max-flip-rate", "100"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    int8, fp32 = out / f"{trained_run.name}-openvino-int8", out / f"{trained_run.name}-openvino-fp32"
    assert last.startswith(f"error: {int8}: openvino int8 bundle: the export worker was killed by SIGSEGV")
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" in last
    assert "about to crash" in result.output                 # the worker's log reached the command's
    assert sorted(p.name for p in out.iterdir()) == [fp32.name]     # no int8 bundle, no staged leftovers
    assert read_manifest(fp32)["precision"] == "fp32"               # verified against its checksums


def test_a_crash_inside_a_fixture_fails_its_tests_and_the_others_run(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_crashing_fixture=textwrap.dedent("""
        import signal
        import pytest
        from edgederm.export.isolation import run_isolated
        from tests.helpers import kill_self

        @pytest.fixture(scope="session")
        def bundle():
            return run_isolated(kill_self, signal.SIGSEGV, what="openvino int8 bundle", log=print)

        def test_needs_the_bundle(bundle):
            pass

        def test_needs_nothing():
            pass
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*NativeCrash: openvino int8 bundle: the export worker was killed by SIGSEGV*"])


def test_openvino_figures_are_those_of_the_saved_bundle_as_the_runtime_runs_it(bundles, synthetic_release):
    """The manifest's test figures equal the runtime's on the same cases, and the INT8 gate says it scored
    saved IR: what a clinic runs is what was measured."""
    from edgederm.data.inputs import load_arrays
    from edgederm.data.release import read_release
    from edgederm.scoring.metrics import compute_metrics
    from edgederm.runtime import load_bundle
    release = read_release(synthetic_release)
    cases = release.split("test")
    labels = np.array([c.labels for c in cases])
    for name in ("openvino-fp32", "openvino-fp16", "openvino-int8"):
        manifest = read_manifest(bundles[name])
        predictor = load_bundle(bundles[name])
        arrays = load_arrays(cases, predictor.preprocess, predictor.input_names)
        runtime = compute_metrics(predictor.run(*arrays), labels)
        assert manifest["metrics"]["avg_auc"] == pytest.approx(runtime["avg_auc"], abs=1e-9), name
        assert manifest["metrics"]["scored"].startswith("saved IR, compiled as the runtime compiles it")
    assert read_manifest(bundles["openvino-int8"])["int8_gate"]["scored"].startswith("saved IR")
