"""Beam glue: the PTransforms that read inputs, anonymize them and write outputs and the
manifest, for images, TFRecords and videos. Thin: the work is in ``detection`` and ``media``.
"""
