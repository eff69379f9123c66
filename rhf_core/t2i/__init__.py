"""Text-to-image generation: one API over the embedded ShapesWorld pipeline and any Stable Diffusion."""

from rhf_core.t2i.generator import DEFAULT_GENERATOR, Generator, GeneratorError, load_generator

__all__ = ["Generator", "GeneratorError", "load_generator", "DEFAULT_GENERATOR"]
