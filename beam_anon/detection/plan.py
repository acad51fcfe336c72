"""The detection plan: which model sees which pixels, at which scale, and when.

For each image (all boxes xyxy pixels, sizes in pixels, scores 0-1), per role (face, plate):

1. **Cheap looks**, every model of the role:
   * the full frame at ``<role>_full_frame_scales`` (default 1x), or at the model's own
     ``model_scales`` entry (RetinaFace: 0.5x, for large faces) (:func:`full_frame_looks`);
     faces also on the image turned by ``face_rotations`` at ``face_rotation_scale`` (models in
     ``face_rotation_models``). The models in ``region_models`` also make these looks:
   * plates: the **overview**, the whole image shrunk to ``overview_size`` pixels (long side),
     where a close-up plate too large for the 1x look is plate-sized;
   * plates: the **close-up** look, the whole image shrunk to ``close_up_size`` pixels, where
     a plate filling the photo is plate-sized; its boxes need ``close_up_threshold``, since a
     false one there covers much of the image (:func:`close_up_look`);
   * plates: every stage-1 **vehicle**, padded, resized so its long side is each of
     ``vehicle_crop_sizes`` pixels (at most ``crop_max_upscale``): a distant car's plate becomes
     large enough, a near car's is not blown up (the seed's idea, scaled per vehicle);
   * faces: every stage-1 **person** whose expected face (:func:`expected_face`) is smaller than
     ``person_face_size``: its head area, upscaled so that face is ``person_face_size`` pixels.

   Small crops share canvases (:mod:`beam_anon.detection.looks`): a dozen vehicles cost one or two passes.
2. **Zoom where unsure**, the role's ``zoom_models``: neighbourhoods of the cheap looks'
   candidates that scored in ``[zoom_min_score, threshold)`` and are at most ``zoom_max_size``
   pixels, upscaled ``zoom_scale``; overlapping neighbourhoods merge into one crop.
3. **Crowd fallback**, faces: only when the cheap looks found ``crowd_min_faces`` or more faces
   under ``crowd_face_size`` pixels, the area around them is searched again at ``crowd_scale``.
4. **Agreement**, models listed in ``agree_thresholds``: a box below its model's threshold
   but at least its entry there is accepted where another listed model found a box at the same
   place (:func:`agreement`).
5. **Off a vehicle**, plates, when stage 1 ran and ``plate_off_vehicle_threshold`` is set (off
   by default): a plate box whose centre lies on no stage-1 vehicle (grown by
   :data:`VEHICLE_GROWTH` of its size) needs that score, or it is a near miss
   (:func:`off_vehicle`): plates are on vehicles, and crowds, shop fronts and signs hold most of
   the false plate boxes; a distant plate whose vehicle stage 1 missed still passes if sure.
6. **Plate check**, when ``plate_check_model`` is set: plate boxes of the models it was
   trained on (its registry entry's ``checks``) scoring under
   ``plate_check_below`` whose short side is at least ``plate_check_min_side`` are shown to a
   crop classifier (the box with context, :mod:`beam_anon.detectors.crop_check`); those it
   scores under ``plate_check_threshold`` are not blurred (:func:`check_asked`).
7. **Head fallback**, faces, when ``head_fallback``: a stage-1 person large enough that its face
   should have been found (expected face >= ``head_fallback_min_face``), with no face or
   candidate in its head area, gets that head area blurred.

Presets (:mod:`beam_anon.detection.presets`) are named sets of these settings; options
override them.
"""
from __future__ import annotations

import numpy as np

from beam_anon.boxes import (Detections, at_least_tall, centres_inside, clip, expand,
                             iou_matrix, merge_overlapping, merge_regions)
from beam_anon.detection.regions import Crop, int_box, scaled_tiles
from beam_anon.settings import Settings

VEHICLES = ("bicycle", "car", "motorcycle", "bus", "truck")
PERSON = "person"
FACE_PER_PERSON_HEIGHT = 0.12   # a standing person's face is about this fraction of its height
FACE_PER_PERSON_WIDTH = 0.35    # ... and of its width (shoulders are about three faces wide)


def full_frame_looks(width: int, height: int, settings: Settings, role: str,
                     model: str, input_size: int | None = None) -> list[Crop]:
    """The whole image at the role's full-frame scales (capped per model), plus the turned
    passes for face models in ``face_rotation_models``. Any-size models see it resized by the
    scale, whole up to ``full_frame_max_side`` pixels (tiles above). A model trained at
    ``input_size`` (YOLO: 640) sees tiles of at most ``full_frame_tile`` image pixels, at scale
    s each resized so its long side is ``s * input_size`` (s > 1: smaller tiles, each at
    ``input_size``)."""
    whole = (0, 0, width, height)
    crops = []
    for s in settings.full_frame_scales(role, model):
        if input_size:
            side = settings.full_frame_tile / max(s, 1.0)
            crops += sized_tiles(whole, side, round(input_size * min(s, 1.0)), "full_frame")
        else:
            crops += scaled_tiles(whole, s, settings.full_frame_max_side, "full_frame")
    if settings.full_frame and role == "face" and model in settings.face_rotation_models:
        for degrees in settings.face_rotations:
            crops += scaled_tiles(whole, settings.face_rotation_scale,
                                  settings.full_frame_max_side, "turned", int(degrees) // 90)
    return crops


def sized_tiles(xyxy, tile_side: float, size: int, source: str) -> list[Crop]:
    """Tiles of at most ``tile_side`` pixels of ``xyxy``, each resized so its long side is
    ``size`` (what a YOLO model sees at its trained size)."""
    tiles = scaled_tiles(xyxy, 1.0, max(32, int(tile_side)), source)
    return [Crop(t.xyxy, size / max(t.xyxy[2] - t.xyxy[0], t.xyxy[3] - t.xyxy[1]), source)
            for t in tiles]


def stage1_look(width: int, height: int, input_size: int | None) -> Crop:
    """Stage 1 sees the whole image, resized to its model's trained size when it has one."""
    scale = input_size / max(width, height) if input_size else 1.0
    return Crop((0, 0, width, height), scale, "stage1")


#: an image at most this factor larger than ``stage1_tile`` is not tiled (the tiles would see
#: it at nearly the whole image's scale)
TILE_MIN_GAIN = 1.25


def stage1_looks(width: int, height: int, settings: Settings,
                 input_size: int | None) -> list[Crop]:
    """The whole image (:func:`stage1_look`), plus, when ``stage1_tile`` is set and the image
    is larger by at least :data:`TILE_MIN_GAIN`, overlapping tiles of at most ``stage1_tile``
    pixels a side, each resized to ``input_size`` (models that take any size and resize
    themselves, NanoDet: as they are). The whole image keeps near objects whole; the tiles show
    distant ones larger."""
    looks = [stage1_look(width, height, input_size)]
    tile = settings.stage1_tile
    if tile <= 0 or max(width, height) < TILE_MIN_GAIN * tile:
        return looks
    whole = (0, 0, width, height)
    tiles = (sized_tiles(whole, tile, input_size, "stage1_tile") if input_size
             else scaled_tiles(whole, 1.0, tile, "stage1_tile"))
    return looks + tiles


def _shrunk_whole(width: int, height: int, size: int, source: str) -> list[Crop]:
    """The whole image shrunk to ``size`` pixels (long side); none when that is not a shrink
    or ``size`` is 0."""
    scale = size / max(width, height)
    return [Crop((0, 0, width, height), scale, source)] if 0 < scale < 1 else []


def overview_look(width: int, height: int, settings: Settings) -> list[Crop]:
    """The whole image shrunk to ``overview_size`` pixels (long side), if that shrinks it."""
    return _shrunk_whole(width, height, settings.overview_size, "overview")


def close_up_look(width: int, height: int, settings: Settings) -> list[Crop]:
    """The whole image shrunk to ``close_up_size`` pixels (long side), if that shrinks it. Run
    apart from the cheap looks: its boxes need at least ``close_up_threshold``, and those below
    are not queued for review either."""
    return _shrunk_whole(width, height, settings.close_up_size, "close_up")


def _stage1(stage1: Detections, classes, settings: Settings) -> Detections:
    wanted = stage1.with_label(*[c for c in classes if c in settings.stage1_classes])
    return wanted[wanted.scores >= settings.stage1_threshold]


#: a vehicle crop within this factor of the full-frame look's scale sees nothing new
SAME_SCALE = 1.5


def vehicle_looks(stage1: Detections, width: int, height: int, settings: Settings,
                  seen_at: float = 0.0) -> list[Crop]:
    """Crops of each stage-1 vehicle (boxes overlapping by IoU > ``merge_iou`` merged), padded by
    ``region_padding_fraction``, resized so its long side is each of ``vehicle_crop_sizes``;
    except crops within :data:`SAME_SCALE` of ``seen_at``, the scale at which the model's
    full-frame look already sees the vehicle (a closer look finds small plates, a farther one
    plates too large for the model, the same scale nothing new)."""
    vehicles = _stage1(stage1, VEHICLES, settings)
    if not len(vehicles) or not settings.vehicle_crop_sizes:
        return []
    merged = merge_regions(vehicles.xyxy, width, height, settings.merge_iou, 0.0, 0.0)
    padded = clip(expand(Detections.from_boxes(merged, np.ones(len(merged)), "vehicle"),
                         settings.region_padding_fraction), width, height)
    crops = []
    for box in padded.xyxy:
        rect = int_box(box, width, height)
        if rect is None:
            continue
        long_side = max(rect[2] - rect[0], rect[3] - rect[1])
        for size in settings.vehicle_crop_sizes:
            scale = min(settings.crop_max_upscale, size / long_side)
            if not seen_at or not 1 / SAME_SCALE < scale / seen_at < SAME_SCALE:
                crops.append(Crop(rect, scale, "vehicle"))
    return crops


def expected_face(person_xyxy: np.ndarray) -> np.ndarray:
    """(N,) expected face size in pixels of (N, 4) person boxes: the larger of the estimates
    from its height (standing) and its width (a partly visible or sitting person)."""
    wh = person_xyxy[:, 2:] - person_xyxy[:, :2]
    return np.maximum(wh[:, 1] * FACE_PER_PERSON_HEIGHT, wh[:, 0] * FACE_PER_PERSON_WIDTH)


def head_areas(person_xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) head areas of person boxes: the top of the box, about three expected faces wide
    and tall, centred."""
    face = expected_face(person_xyxy)
    cx = (person_xyxy[:, 0] + person_xyxy[:, 2]) / 2
    half = np.minimum(1.5 * face, (person_xyxy[:, 2] - person_xyxy[:, 0]) / 2)
    bottom = np.minimum(person_xyxy[:, 1] + 2.5 * face, person_xyxy[:, 3])
    return np.stack([cx - half, person_xyxy[:, 1], cx + half, bottom], axis=1)


def person_looks(stage1: Detections, width: int, height: int, settings: Settings) -> list[Crop]:
    """Head areas of persons whose expected face is under ``person_face_size``, upscaled so
    it reaches that size (at most ``crop_max_upscale``)."""
    persons = _stage1(stage1, (PERSON,), settings)
    if not len(persons) or settings.person_face_size <= 0:
        return []
    faces = expected_face(persons.xyxy)
    crops = []
    for area, face in zip(head_areas(persons.xyxy), faces):
        rect = int_box(area, width, height)
        scale = min(settings.crop_max_upscale, settings.person_face_size / max(face, 1.0))
        if rect is not None and scale > 1.0:
            crops.append(Crop(rect, scale, "person"))
    return crops


def zoom_looks(candidates: Detections, width: int, height: int, settings: Settings) -> list[Crop]:
    """Neighbourhoods of ``candidates`` (unsure detections of one role) no larger than
    ``zoom_max_size``, grown by ``zoom_context`` of their size per side (at least 8 px), merged
    where they overlap, at ``zoom_scale`` (tiled if a merged area is large)."""
    if not settings.zoom or not len(candidates):
        return []
    small = candidates[candidates.wh.max(axis=1) <= settings.zoom_max_size]
    if not len(small):
        return []
    areas = clip(expand(small, settings.zoom_context, 8.0), width, height).xyxy
    merged = merge_overlapping(areas)
    return [c for a in merged if (r := int_box(a, width, height)) is not None
            for c in scaled_tiles(r, settings.zoom_scale, settings.full_frame_max_side, "zoom")]


def agrees(dets: Detections, candidates: Detections, min_iou: float = 0.2) -> np.ndarray:
    """(N,) True where a box of ``dets`` overlaps one of ``candidates`` by IoU >= ``min_iou``:
    two looks at different scales agree that something is there."""
    if not len(dets) or not len(candidates):
        return np.zeros(len(dets), bool)
    return (iou_matrix(dets.xyxy, candidates.xyxy) >= min_iou).any(axis=1)


#: boxes of two models overlapping this much agree that the same object is there
AGREE_IOU = 0.3


def _agree_floor(dets: Detections, settings: Settings) -> tuple[np.ndarray, list[set]]:
    """Per box: the lowest ``agree_thresholds`` entry of the models that found it (inf when
    none is listed) and that set of models."""
    floor, names = np.full(len(dets), np.inf, np.float32), []
    for i in range(len(dets)):
        found_by = set(dets.models(i))
        values = [v for n in found_by
                  if (v := Settings._per_model(settings.agree_thresholds, n)) is not None]
        floor[i] = min(values, default=np.inf)
        names.append(found_by)
    return floor, names


def agreement(unsure: Detections, pool: Detections, settings: Settings) -> np.ndarray:
    """(N,) True where an ``unsure`` box (below its model's threshold) scores at least its
    model's ``agree_thresholds`` entry and overlaps (IoU >= :data:`AGREE_IOU`) a box of
    ``pool`` that *another* listed model found scoring at least its own entry: two models that
    miss different things rarely err at the same place, so their agreement admits boxes below
    either one's threshold without their false boxes."""
    if not settings.agree_thresholds or not len(unsure) or not len(pool):
        return np.zeros(len(unsure), bool)
    (fu, mu), (fp, mp) = _agree_floor(unsure, settings), _agree_floor(pool, settings)
    near = (iou_matrix(unsure.xyxy, pool.xyxy) >= AGREE_IOU) & (pool.scores >= fp)[None, :]
    return np.array([score >= floor and any(not mu[i] & mp[j] for j in np.flatnonzero(near[i]))
                     for i, (score, floor) in enumerate(zip(unsure.scores, fu))], bool)


def doubted(unsure: Detections, settings: Settings) -> np.ndarray:
    """(N,) True for ``unsure`` boxes found only by closer looks (zoom, crowd) of a model listed
    in ``agree_thresholds`` while another listed model made the same closer looks (both in
    ``zoom_models``): the second opinion was asked and did not confirm, so such a box is turned
    down rather than queued for review (unless :func:`agreement` admitted it)."""
    listed = {e.partition("=")[0].strip() for e in settings.agree_thresholds}
    zooming = listed & set(settings.zoom_models)
    out = np.zeros(len(unsure), bool)
    if len(zooming) < 2:
        return out
    for i, sources in enumerate(unsure.sources):
        out[i] = (bool(sources) and unsure.looks(i) <= {"zoom", "crowd"}
                  and set(unsure.models(i)) <= zooming)
    return out


#: stage-1 vehicle boxes are grown by this fraction of their size per side before asking
#: whether a plate lies on one (a plate's box may stick out of a tight vehicle box)
VEHICLE_GROWTH = 0.1


def off_vehicle(plates: Detections, stage1: Detections, width: int, height: int,
                settings: Settings) -> np.ndarray:
    """(N,) True for the ``plates`` scoring under ``plate_off_vehicle_threshold`` whose centre
    lies on no stage-1 vehicle box (at ``stage1_threshold``, grown by :data:`VEHICLE_GROWTH`);
    all False when the setting is 0 or no stage-1 model is set."""
    out = np.zeros(len(plates), bool)
    if not settings.plate_off_vehicle_threshold or not settings.stage1_model or not len(plates):
        return out
    vehicles = clip(expand(_stage1(stage1, VEHICLES, settings), VEHICLE_GROWTH), width, height)
    on = centres_inside(plates.xyxy, vehicles.xyxy).any(axis=1)   # (N, 0) with no vehicle
    return ~on & (plates.scores < settings.plate_off_vehicle_threshold)


def overview_only(plates: Detections, settings: Settings) -> np.ndarray:
    """(N,) True for the ``plates`` found by no look but the overview, scoring under
    ``overview_threshold`` (all False when it is 0): a plate-sized box at 300 px is a large
    part of the image, so a false one costs much area, and the close-up plates the overview is
    for score high there."""
    if not settings.overview_threshold or not len(plates):
        return np.zeros(len(plates), bool)
    only = np.array([plates.looks(i) == {"overview"} for i in range(len(plates))], bool)
    return only & (plates.scores < settings.overview_threshold)


def check_asked(plates: Detections, settings: Settings, checks=()) -> np.ndarray:
    """(N,) True for the plate boxes the plate check is asked about: found only by models in
    ``checks`` (those it was trained on), scoring under ``plate_check_below``, short side at
    least ``plate_check_min_side`` pixels (a distant plate has too few pixels for a second
    opinion; it keeps the detector's)."""
    if not settings.plate_check_model or not len(plates):
        return np.zeros(len(plates), bool)
    trained_on = np.array([bool(m) and set(m) <= set(checks)
                           for m in map(plates.models, range(len(plates)))], bool)
    return (trained_on & (plates.scores < settings.plate_check_below)
            & (plates.wh.min(axis=1) >= settings.plate_check_min_side))


def crowd_looks(faces: Detections, width: int, height: int, settings: Settings) -> list[Crop]:
    """When ``faces`` holds at least ``crowd_min_faces`` boxes under ``crowd_face_size``: the
    area around them (their bounding box grown by three median face sizes) at ``crowd_scale``."""
    if settings.crowd_min_faces <= 0 or not len(faces):
        return []
    small = faces[faces.wh.min(axis=1) < settings.crowd_face_size]
    if len(small) < settings.crowd_min_faces:
        return []
    margin = 3 * float(np.median(small.wh.max(axis=1)))
    x0, y0 = small.xyxy[:, :2].min(axis=0) - margin
    x1, y1 = small.xyxy[:, 2:].max(axis=0) + margin
    rect = int_box((x0, y0, x1, y1), width, height)
    if rect is None:
        return []
    return scaled_tiles(rect, settings.crowd_scale, settings.full_frame_max_side, "crowd")


def head_fallback(stage1: Detections, faces: Detections, settings: Settings) -> Detections:
    """Head areas (label ``face``, score = the person's) of persons scoring at least
    ``head_fallback_min_score`` whose expected face is at least ``head_fallback_min_face``
    pixels and whose head area holds the centre of no box in ``faces`` (found faces and
    candidates); empty when ``head_fallback`` is off."""
    if not settings.head_fallback:
        return Detections.empty()
    persons = _stage1(stage1, (PERSON,), settings)
    persons = persons[(persons.scores >= settings.head_fallback_min_score)
                      & (expected_face(persons.xyxy) >= settings.head_fallback_min_face)]
    if not len(persons):
        return Detections.empty()
    areas = head_areas(persons.xyxy)
    empty = ~centres_inside(faces.xyxy, areas).any(axis=0)
    return Detections.from_boxes(areas[empty], persons.scores[empty], "face")


def cheap_looks(role: str, model: str, stage1: Detections, width: int, height: int,
                settings: Settings, input_size: int | None = None) -> list[Crop]:
    """Step 1 for one model of ``role``: full frame (+ turned), and for ``region_models``
    the overview and vehicles for plates, persons' heads for faces."""
    crops = full_frame_looks(width, height, settings, role, model, input_size)
    if model not in settings.region_models:
        return crops
    if role == "plate":
        seen = max((c.scale for c in crops if c.source == "full_frame"), default=0.0)
        crops += overview_look(width, height, settings)
        crops += vehicle_looks(stage1, width, height, settings, seen_at=seen)
    else:
        crops += person_looks(stage1, width, height, settings)
    return crops


def with_margins(found: Detections, settings: Settings) -> Detections:
    """Boxes grown by the blur margin of their role (``plate_margin_fraction`` for plates,
    ``blur_margin_fraction`` for the rest), at least 1 pixel per side; plates then at least
    ``plate_min_height_fraction`` of their width tall (detectors often box only the characters
    of a plate whose frame and text rows reach further); not clipped."""
    plates = found.labels.astype(str) == "plate"
    grown = expand(found[plates], settings.plate_margin_fraction, 1.0)
    return Detections.concat([expand(found[~plates], settings.blur_margin_fraction, 1.0),
                              at_least_tall(grown, settings.plate_min_height_fraction)])
