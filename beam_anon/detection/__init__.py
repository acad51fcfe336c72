"""The detection plan and what follows it: which model sees which pixels at which scale
(``plan``, ``looks``, ``regions``), the per-image run (``anonymize``), blur, verification, the
review queue and video's temporal step (``tracking``). Pure functions on ``Detections``.
"""
