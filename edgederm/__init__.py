"""EdgeDerm: offline skin-lesion triage from paired clinical and dermoscopy photos.

Stages, each importing only the ones before it:
data -> models -> training -> calibration -> export -> runtime -> benchmarks.
calibration/, export/ and benchmarks/ sit at the repository root and install
as edgederm.calibration, edgederm.export and edgederm.benchmarks. The one
exception to the order: the bundle format (`edgederm.runtime.bundle`,
`edgederm.runtime.device`) belongs to the device side, and export writes
through it.

The package root imports nothing heavy, so device-side commands stay free of torch.
"""
__version__ = "0.1.0"
