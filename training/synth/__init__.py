"""Synthetic categories for running the whole pipeline without data (`rpe-pad synth`)."""

from training.synth.generate import SynthConfig, generate

__all__ = ["SynthConfig", "generate"]
