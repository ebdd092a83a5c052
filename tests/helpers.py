"""Plain helpers shared by the tests; tests/conftest.py keeps only fixtures, and no test module imports
from conftest or from another test module (tests/test_helpers_layout.py checks this).

Some helpers here are imported by other processes: the exporter builds bundles in spawned workers
(export/isolation.py), which import a function by its module path, so a stand-in format function
lives here and not inside a test. Those workers import this module, so it imports only the standard
library at the top; the other helpers import what they need when called."""
from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


# --- stand-ins that spawned export workers import by module path ---------------------


def half_bundle_then_interrupt(ctx, target, precision: str, directory: Path, log) -> None:
    """A format function interrupted (Ctrl-C) after writing part of its bundle."""
    (directory / "model.xml").write_text("half")
    raise KeyboardInterrupt


def segfault_on_int8(ctx, target, precision: str, directory: Path, log) -> None:
    """The OpenVINO format function, except that an INT8 bundle dies of SIGSEGV half-way, as OpenVINO's
    AMX kernels did on the in-memory NNCF model."""
    from edgederm.export.bundles import openvino_bundle
    if precision == "int8":
        (directory / "model.xml").write_text("half")
        log("about to crash")
        os.kill(os.getpid(), signal.SIGSEGV)
    openvino_bundle(ctx, target, precision, directory, log)


def kill_self(signal_number: int, log) -> None:
    os.kill(os.getpid(), signal_number)


def unpicklable_result(log):
    """A result the worker cannot send back: a lambda does not pickle."""
    return lambda: None


def report_then_hang(log) -> str:
    """Returns, then keeps the worker from exiting: a non-daemon thread the interpreter waits for."""
    import threading
    import time
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return "reported"


def add(a: int, b: int, log) -> int:
    log(f"adding {a} and {b}")
    return a + b


def raise_config_error(message: str, log) -> None:
    from edgederm.errors import ConfigError
    raise ConfigError(message)


def refusing_int8(ctx, target, precision: str, directory: Path, log) -> None:
    """The target's format function, except that its INT8 bundle is refused by the gate."""
    from edgederm.export import bundles
    from edgederm.export.int8_gate import NoPassingInt8
    if precision == "int8":
        raise NoPassingInt8(f"{target.name} int8: no INT8 graph passes the gate on the valid split (test)")
    getattr(bundles, f"{target.name}_bundle")(ctx, target, precision, directory, log)


def jetson_bundle_in_onnxruntime_form(ctx, target, precision: str, directory: Path, log) -> None:
    """The Jetson format function with the Q/DQ graph left in onnxruntime's form (no `tensorrt_form`),
    which TensorRT 10.3 would refuse. Patched here, in the worker: the worker is where the graph is made."""
    from edgederm.export import bundles, tensorrt_export
    tensorrt_export.tensorrt_form = lambda model: model
    bundles.jetson_bundle(ctx, target, precision, directory, log)


def interrupted_qat(ctx, target, precision: str, directory: Path, log) -> None:
    """The OpenVINO format function, with quantization-aware fine-tuning interrupted (Ctrl-C) in its first
    step: patched here, in the worker, where the student trains."""
    from edgederm.export import bundles, qat

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    qat.distill = interrupt
    bundles.openvino_bundle(ctx, target, precision, directory, log)


def plain_ptq_refused(ctx, target, precision: str, directory: Path, log) -> None:
    """The target's format function, with every plain PTQ graph failing the gate on valid: the search goes
    on to QAT. Patched here, in the worker, where the search runs."""
    from edgederm.export import bundles, int8_gate
    judge = int8_gate.judge_on_valid

    def failing_plain(valid, attempt, probabilities, log):
        attempt = judge(valid, attempt, probabilities, log)
        if attempt.method.startswith("plain PTQ"):
            attempt.result["verdict"] = "fail"
            attempt.result["reasons"].insert(0, "refused by the test")
        return attempt
    int8_gate.judge_on_valid = failing_plain
    getattr(bundles, f"{target.name}_bundle")(ctx, target, precision, directory, log)


# --- releases written by hand (the reader's error cases) ----------------------------

def write_jpeg(path: Path, rgb: np.ndarray | None = None) -> Path:
    import cv2
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def read_meta(root: Path) -> list[dict[str, str]]:
    with open(root / "meta" / "meta.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_meta(root: Path, rows: list[dict[str, str]], columns=None) -> None:
    """Write meta/meta.csv with `columns` (default: the release's META_COLUMNS)."""
    if columns is None:
        from edgederm.data.release import META_COLUMNS
        columns = META_COLUMNS
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_indexes(root: Path, splits: dict[str, list[int]]) -> None:
    for split, rows in splits.items():
        (root / "meta" / f"{split}_indexes.csv").write_text("indexes\n" + "".join(f"{i}\n" for i in rows))


# --- fast training and the seed-method runs' exports and benches ---------------------

# Tiny model at 64 px, batch 8: a few seconds per epoch on the 40-case test release.
FAST_TRAINING = {"epochs": 3, "batch_size": 8, "swa_epochs": 1, "warmup_epochs": 0, "seed": 7, "validate_every": 1}


def train_family_run(release: Path, folder: Path, preset: str, size: int | None = 64) -> Path:
    """A finished run of `preset` (FAST_TRAINING: 3 epochs) in folder/preset; `size` None: the preset's own."""
    from edgederm.presets import resolve_config
    from edgederm.training.trainer import train
    run = folder / preset
    model_cfg, train_cfg = resolve_config(preset, model_overrides={} if size is None else {"img_size": size},
                                          train_overrides=FAST_TRAINING)
    train(release, run, model_cfg, train_cfg, progress=False)
    return run


def fast_configs(**train_overrides):
    from edgederm.presets import resolve_config
    return resolve_config("tiny", model_overrides={"img_size": 64},
                          train_overrides={**FAST_TRAINING, **train_overrides})


def export_for_devices(run: Path, data: Path, out: Path) -> dict[str, Path]:
    """{target: bundle} of a seed-method run for torch (FP32), OpenVINO and the Jetson (INT8, gated with the
    CI-sized release's wide limits, as in `bundles`), after checking that each INT8 bundle holds a graph the
    gate passed and that the Jetson graphs have TensorRT's form."""
    from edgederm.export.exporter import ExportRequest, export
    from edgederm.export.jetson_check import check_graph
    from edgederm.runtime.bundle import read_manifest
    written = {}
    for target, precisions in (("torch", "fp32"), ("openvino", "int8"), ("jetson", "int8")):
        wide = {"max_auc_drop": 50.0, "max_flip_rate": 100.0} if precisions == "int8" else {}
        for path in export(ExportRequest(run=run, target=target, precisions=precisions, data=data, out=out, **wide),
                           log=lambda m: None):
            written[target] = path
    for target in ("openvino", "jetson"):
        gate = read_manifest(written[target])["int8_gate"]
        assert gate["attempts"][gate["chosen"]]["verdict"] == "pass", target
    for graph in read_manifest(written["jetson"])["graphs"]:
        assert check_graph(written["jetson"] / graph) == [], graph
    return written


def bench_against_torch(written: dict[str, Path], data: Path, report: dict) -> None:
    """Bench a seed-method run's OpenVINO and Jetson (onnxruntime) bundles against its torch bundle on the test
    split: every row runs every case, and the reference's AUC is the one `evaluate` reported."""
    import numpy as np

    from edgederm.benchmarks.bench import run_bench
    from edgederm.scoring.gate import GateSettings
    bench = run_bench([str(written["openvino"]), f"{written['jetson']}@onnxruntime"], reference=str(written["torch"]),
                      data=data, split="test", batch_sizes=[1], warmup=1, runs=3,
                      gate=GateSettings(max_auc_drop=50.0, max_flip_rate=100.0), photos=[], e2e_runs=1)
    rows = {r["name"]: r for r in bench["variants"]}
    assert all(r["status"] == "ok" and r["accuracy"]["cases"] == report["cases"] for r in rows.values()), rows
    reference = next(r for r in bench["variants"] if r["verdict"] == "reference")
    assert np.isclose(reference["accuracy"]["avg_auc"], report["branches"]["final"]["avg_auc"])


# --- a TensorRT engine's build without TensorRT (test_tensorrt_runtime, test_jif_mmfa) ---

FACTS = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "sm_count": 16,
         "board": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.0"}


class FakeLayer:
    """A network layer as build_engine sees it: a name, a settable precision, outputs with a type."""

    def __init__(self, name: str, dtypes: list[str]):
        self.name, self.dtypes, self.precision, self.output_types = name, dtypes, None, {}

    @property
    def num_outputs(self) -> int:
        return len(self.dtypes)

    def get_output(self, index: int):
        return SimpleNamespace(dtype=self.dtypes[index])

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class FakeNetwork:
    """The layers TensorRT's ONNX parser makes of a graph, named by its rule (onnx-tensorrt's registerLayer): a
    node's first layer takes the node's name, each further layer `<node>_<counter>` (one counter for the whole
    network), and a name already taken gets a suffix too. Convolutions and matrix products get a second layer (as a
    bias or reshape would), and one layer comes from no node (a constant), so the name mapping is exercised."""

    def __init__(self):
        self.layers, self._names, self._counter = [], set(), 0

    def _unique(self, base: str) -> str:
        name = base
        while name in self._names:
            name, self._counter = f"{base}_{self._counter}", self._counter + 1
        self._names.add(name)
        return name

    def parse(self, path: str) -> None:
        import onnx
        self.layers.append(FakeLayer(self._unique("(Unnamed Layer* 0) [Constant]"), ["float32"]))
        for node in onnx.load(path, load_external_data=False).graph.node:
            if node.op_type == "Constant":          # no layer (the parser keeps it as weights)
                continue
            dtypes = {"Shape": ["int64"], "TopK": ["float32", "int64"]}.get(node.op_type, ["float32"] * len(node.output))
            self.layers.append(FakeLayer(self._unique(node.name), dtypes))
            if node.op_type in ("Conv", "MatMul", "Gemm"):
                self.layers.append(FakeLayer(self._unique(node.name), ["float32"]))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> FakeLayer:
        return self.layers[index]


class FakeBuilderTrt(SimpleNamespace):
    """What build_engine asks of tensorrt, recording what it was asked: the flags of each builder config
    (`configs`), the parsed graphs and their networks' layers (`networks`)."""

    def __init__(self, cache_accepted: bool = True, build_ok: bool = True, version: str = "10.3.0"):
        super().__init__(__version__=version, log=[], float32="float32", float16="float16", int64="int64")
        self.cache_accepted, self.build_ok, self.profiles, self.cache_sets = cache_accepted, build_ok, [], []
        self.parsed, self.configs, self.networks = [], [], []
        outer = self
        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass
        self.Logger = Logger
        self.NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=0)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = SimpleNamespace(INT8="int8", FP16="fp16", OBEY_PRECISION_CONSTRAINTS="obey")

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"cache:" + outer.__version__.encode()

        class Config:
            def __init__(self):
                self.flags, self.cache = [], None
                outer.configs.append(self)

            def set_memory_pool_limit(self, pool, size):
                pass

            def set_flag(self, flag):
                self.flags.append(flag)

            def add_optimization_profile(self, profile):
                outer.profiles.append(profile.shapes)
                return len(outer.profiles) - 1

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                accepted = outer.cache_accepted or cache.data == b""     # a fresh cache always fits
                outer.cache_sets.append((cache.data, accepted))
                self.cache = cache if accepted else None
                return accepted

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (low[0], opt[0], high[0])

        def create_network(flags):
            outer.networks.append(FakeNetwork())
            return outer.networks[-1]

        def parse(network, path):
            outer.parsed.append(path)
            network.parse(path)
            return True

        self.Builder = lambda logger: SimpleNamespace(
            create_network=create_network, create_builder_config=Config,
            create_optimization_profile=Profile,
            build_serialized_network=lambda network, config: b"ENGINE" if outer.build_ok else None)
        self.OnnxParser = lambda network, logger: SimpleNamespace(
            parse_from_file=lambda path: parse(network, path), num_errors=0)

    @property
    def flags(self) -> list[str]:
        """The flags of the last build."""
        return self.configs[-1].flags

    def pinned(self) -> dict[str, dict]:
        """The last build's layers set to FP32: name -> their output types."""
        return {layer.name: layer.output_types for layer in self.networks[-1].layers if layer.precision == "float32"}


# --- a real browser (test_report_browser, test_serve_browser) ------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    """The path of Debian's Chromium, skipping the test (failing it in CI) where it or playwright is missing."""
    import pytest
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = "Debian's chromium is not installed (apt-get install -y chromium)" if not path else None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("EDGEDERM_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def crash_after_checkpoint(monkeypatch, after_epoch: int | None = None) -> None:
    """Make training die (KeyboardInterrupt, as Ctrl-C) right after the checkpoint of `after_epoch` (0-based;
    None: the first one) is written, so a test can resume it; monkeypatch.undo() or a new setattr restores it."""
    import edgederm.training.trainer as trainer_module
    real_save = trainer_module.save_checkpoint

    def save_then_crash(run_dir, epoch, *args):
        real_save(run_dir, epoch, *args)
        if after_epoch is None or epoch == after_epoch:
            raise KeyboardInterrupt
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_crash)
