"""visionpipe: decode -> detect -> classify on GPUs, stages joined by a broker."""

__version__ = "0.1.0"
