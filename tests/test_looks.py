"""Running a detector on many crops (beam_anon.detection.looks): packing into shared canvases and mapping
every box back to image pixels exactly, through resizing and turns; cost accounting."""
import cv2
import numpy as np

from beam_anon.detection import looks
from beam_anon.boxes import Detections
from beam_anon.detectors import Detector
from beam_anon.detection.regions import Crop

RED = (0, 0, 255)


class Blobs(Detector):
    """Finds pure red blobs; records the canvases it was shown."""

    name, role = "blobs", "face"

    def __init__(self, canvas=None):
        self.canvas, self.shown = canvas, []

    def detect(self, image, min_score):
        self.shown.append(image.shape[:2])
        mask = np.all(image == RED, axis=2).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]]
        return Detections.from_boxes(boxes, np.full(len(boxes), 0.9), "face")


def picture():
    img = np.full((600, 800, 3), 60, np.uint8)
    for x, y in ((100, 100), (400, 300), (700, 500)):
        img[y:y + 20, x:x + 20] = RED
    return img


def test_pack_places_cells_without_overlap_inside_the_canvas():
    cells = [looks.Cell(Crop((0, 0, 1, 1), 1.0, "t"), np.zeros((h, w, 3), np.uint8), (1, 1))
             for w, h in ((300, 150), (300, 150), (150, 80), (150, 80), (150, 80), (700, 50))]
    canvases = looks.pack(cells, (640, 640))
    assert sum(len(c.cells) for c in canvases) == 6
    assert len(canvases) == 2  # the 700-px cell cannot fit and gets a canvas of its own
    for canvas in canvases:
        rects = [(c.at[0], c.at[1], c.at[0] + c.pixels.shape[1], c.at[1] + c.pixels.shape[0])
                 for c in canvas.cells]
        for i, a in enumerate(rects):
            assert a[2] <= canvas.pixels.shape[1] and a[3] <= canvas.pixels.shape[0]
            for b in rects[i + 1:]:
                assert a[2] + looks.GAP <= b[0] or b[2] + looks.GAP <= a[0] or \
                    a[3] + looks.GAP <= b[1] or b[3] + looks.GAP <= a[1]


def test_boxes_map_back_exactly_from_packed_scaled_and_turned_crops():
    img = picture()
    crops = [Crop((90, 90, 130, 130), 3.0, "zoom"), Crop((390, 290, 430, 330), 0.5, "zoom"),
             Crop((650, 450, 800, 600), 1.0, "zoom", turns=2)]
    for canvas in ((640, 640), None):
        det = Blobs(canvas)
        cost = looks.Cost()
        found = looks.run(det, img, crops, 0.1, cost)
        got = sorted(found.xyxy.round().astype(int).tolist())
        assert got == [[100, 100, 120, 120], [400, 300, 420, 320], [700, 500, 720, 520]]
        assert cost.passes == {"blobs": len(det.shown)} and len(det.shown) == 1  # one canvas
        assert cost.megapixels["blobs"] > 0


def test_trimmed_canvas_for_any_size_models_and_full_size_for_fixed_ones():
    img = picture()
    small = [Crop((90, 90, 130, 130), 1.0, "zoom")]
    free, fixed = Blobs(), Blobs((640, 640))
    looks.run(free, img, small, 0.1)
    looks.run(fixed, img, small, 0.1)
    assert free.shown == [(40, 40)] and fixed.shown == [(640, 640)]


def test_a_box_in_a_gap_or_another_cell_is_not_misassigned():
    cell_a = looks.Cell(Crop((0, 0, 10, 10), 1.0, "t"), np.zeros((10, 10, 3), np.uint8), (1, 1))
    cell_b = looks.Cell(Crop((100, 100, 110, 110), 1.0, "t"), np.zeros((10, 10, 3), np.uint8),
                        (1, 1))
    (canvas,) = looks.pack([cell_a, cell_b], (64, 64))
    a, b = canvas.cells
    box_b = [b.at[0] + 2, b.at[1] + 2, b.at[0] + 6, b.at[1] + 6]
    in_gap = [0, 0, 3, 3]                          # the canvas border, in no cell
    out = looks.unpack(Detections.from_boxes([box_b, in_gap], [0.9, 0.9], "face"), canvas)
    assert out.xyxy.round().tolist() == [[b.crop.xyxy[0] + 2, b.crop.xyxy[1] + 2,
                                          b.crop.xyxy[0] + 6, b.crop.xyxy[1] + 6]]

