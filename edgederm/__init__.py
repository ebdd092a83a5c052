"""EdgeDerm: offline skin-lesion triage from paired clinical and dermoscopy photos.

Stages, each importing only the ones before it:
data -> models -> training -> calibration -> export -> runtime -> benchmarks.
The package root imports nothing heavy, so device-side commands stay free of torch.
"""
__version__ = "0.1.0"
