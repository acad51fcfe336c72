"""Tools around a run: ``evaluate`` (recall against labels), ``report`` (HTML), ``verify_jpeg``,
``bench`` and ``video_bench`` (speed against the peer, ``peer``), sample data makers.
"""
