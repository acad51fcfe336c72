"""Converters from other model formats to ONNX, used by ``models fetch`` (see
:data:`beam_anon.models.derived.CONVERTERS`); each module converts one format and imports its framework
only when called."""
