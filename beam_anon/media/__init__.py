"""Media I/O: image decoding and encoding (``image_io``), lossless JPEG outputs
(``jpeg_lossless``, ``jpeg_output``), video decoding, encoding and segments. No Beam, no models.
"""
