"""The audit manifest: one JSON object per input image, in JSON Lines files
(``OUTPUT/manifest.jsonl``). Every input appears exactly once, whatever happened to it.

Schema (one line per input; this docstring is the single definition, copied into the README):

============  ================  ===============================================================
field         type              meaning
============  ================  ===============================================================
input         str               the input's full path or URI as read (``gs://...`` stays a URI)
key           str               its path relative to the input glob's fixed directory; the output
                                is written to ``OUTPUT/key``
output        str | null        the anonymized file written, or null (always null when failed)
status        "ok" | "failed"   ``failed``: nothing was written for this input (fail closed)
error         str | null        what went wrong (failed only)
error_type    str | null        exception class name, e.g. ``ImageError``, ``OSError`` (failed only)
width         int | null        width of the orientation-corrected image, pixels (null if undecoded)
height        int | null        height, likewise
format        str | null        ``jpeg`` | ``png``; the output has the same format as the input
jpeg          str | null        JPEG outputs: ``lossless`` (only the MCUs of the blurred boxes
                                were rewritten, every other DCT coefficient is the input's) or
                                ``reencoded`` (whole picture re-encoded); null for PNG and for
                                images that failed before their output was encoded
jpeg_reason   str | null        why ``reencoded`` (``jpeg_mode=reencode``, EXIF orientation, CMYK,
                                12-bit, ...; ``beam_anon.media.jpeg_output``)
boxes         list              regions actually blurred, one per object: ``{label, score, x0,
                                y0, x1, y1, models}``, label ``face`` | ``plate``, score in
                                [0, 1], corners in pixels of the orientation-corrected input (x1,
                                y1 exclusive), margin included; models: which found it
models        list              ``{name, sha256}`` of every model that ran
settings      dict              every ``beam_anon.settings.Settings`` field of the run, and
                                ``licences``: ``{model: {class, licence}}`` of every model the
                                run names (``beam_anon.models.licences``)
timings       dict              seconds per step: ``read``, ``decode``, ``stage1``, ``faces``,
                                ``plates``, ``blur``, ``verify``, ``encode``, ``write`` (steps
                                that did not run are absent)
passes        dict              model passes per model (registry name) for this image, the
                                verification pass's included: why one image was slow
megapixels    dict              megapixels each model computed on (after its own resizing)
needs_review  bool              true when the verification pass still detected a face or plate in
                                the output after its last re-blur round (``beam_anon.detection.verify``)
review        dict | null       why a person should look (``beam_anon.detection.review``): ``{risk,
                                queued, reasons, boxes}``; risk 0-1; queued: in the default
                                OUTPUT/review.jsonl; reasons among ``verify_survived``,
                                ``near_threshold``, ``verify_reblurred``; boxes ``{label, score,
                                x0, y0, x1, y1, reason, risk, queued[, signals, models]}``
                                (pixels, as ``boxes``); ``near_threshold`` boxes were NOT blurred
video         dict | null       videos only (``beam_anon.pipeline.video``): ``frames``, ``fps``,
                                ``duration`` (s), ``rotation`` (degrees applied), counts
                                ``boxes`` / ``tracks`` per label, ``boxes_added`` (by the
                                temporal step), ``sidecar`` (``OUTPUT/<key>.boxes.jsonl``, the
                                per-frame boxes; ``boxes`` above stays empty), streams, segments
                                and the video settings; null for images
============  ================  ===============================================================
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def settings_dict(settings) -> dict:
    """A Settings as the JSON-ready dict the manifest stores (tuples become lists), with the
    licence of every model it names under ``licences``."""
    from beam_anon.models import licences

    return {**json.loads(settings.fingerprint()), "licences": licences.record(settings)}


@dataclass
class ManifestRecord:
    input: str
    key: str
    output: str | None = None
    status: str = STATUS_FAILED
    error: str | None = None
    error_type: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    jpeg: str | None = None
    jpeg_reason: str | None = None
    boxes: list[dict] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    megapixels: dict[str, float] = field(default_factory=dict)
    needs_review: bool = False
    review: dict | None = None
    video: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def failed(self, error: BaseException | str, error_type: str | None = None
               ) -> "ManifestRecord":
        """A copy marked failed, with no output (boxes and size are kept for diagnosis)."""
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            error = str(error) or repr(error)
        return dataclasses.replace(self, status=STATUS_FAILED, output=None, error=str(error),
                                   error_type=error_type or "Error")

    def review_item(self) -> dict | None:
        """This record's candidate line for ``OUTPUT/review.jsonl`` (``{key, input, output,
        status, risk, queued, reasons, why, error, boxes}``: ``beam_anon.detection.review``; a failure has
        risk 1 and is always queued), or None if nothing to review."""
        from beam_anon.detection import review as rv

        if self.ok and not self.review:
            return None
        review = self.review or {}
        reasons = list(review.get("reasons", [])) + ([] if self.ok else [rv.FAILED])
        item = {"key": self.key, "input": self.input, "output": self.output,
                "status": self.status,
                "risk": rv.RISK[rv.FAILED] if not self.ok else review.get("risk", 0.0),
                "queued": not self.ok or bool(review.get("queued", True)),
                "reasons": reasons, "error": self.error, "boxes": review.get("boxes", [])}
        item["why"] = rv.why(item)
        return item

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One line of JSON (no newline inside; keys in schema order)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown manifest fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, line: str) -> "ManifestRecord":
        return cls.from_dict(json.loads(line))
