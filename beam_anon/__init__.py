"""beam_anon: blur every face and licence plate in image datasets with Apache Beam."""

__version__ = "0.1.0"
