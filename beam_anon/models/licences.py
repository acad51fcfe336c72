"""Model licences: what each model's weights are licensed under, and the guard that keeps a run
to permissively licensed models unless the user opts in.

Every registry entry (``models/registry.json``) states its weights' ``licence`` as it really is
and a ``licence_class``:

* ``permissive``: MIT, BSD, Apache-2.0 and the like; always allowed;
* ``agpl``: AGPL-3.0 (e.g. Ultralytics YOLOv8 weights): only with ``--allow_licences agpl``;
* ``unknown``: no licence known for the weights: only with ``--allow_licences unknown``.

:func:`check` is called once where the CLI validates its settings, so a run naming a
non-permissive model (through a preset or an option) stops before any image is read, with a
message naming the model, its licence and the option to pass. :func:`record` is what the
manifest stores in each record's settings, so an audit can show every model's licence.
"""
from __future__ import annotations

from typing import Iterable

CLASSES = ("permissive", "agpl", "unknown")
#: classes a user may opt in to with ``Settings.allow_licences``
OPT_IN = ("agpl", "unknown")


class LicenceError(ValueError):
    """A run names a model whose licence class it has not opted in to."""


def licence_of(name: str) -> dict:
    """``{"class": licence class, "licence": the licence as stated}`` of a registry model."""
    from beam_anon.models import licence_class, model_info   # imported late (no cycle)

    return {"class": licence_class(name), "licence": model_info(name).get("licence") or "unknown"}


def blocked(names: Iterable[str], allowed: Iterable[str]) -> list[tuple[str, dict]]:
    """``(name, licence_of(name))`` of each of ``names`` (once each, in order) whose class is
    neither permissive nor in ``allowed``."""
    ok = {"permissive", *allowed}
    out = []
    for name in dict.fromkeys(names):
        lic = licence_of(name)
        if lic["class"] not in ok:
            out.append((name, lic))
    return out


def check(settings, error: type[Exception] = LicenceError) -> None:
    """Raise ``error`` (default :class:`LicenceError`; the CLI passes ``SystemExit``) when
    ``settings`` name a model whose licence class is not permissive and not in
    ``settings.allow_licences``, or when ``allow_licences`` names an unknown class."""
    bad = [c for c in settings.allow_licences if c not in OPT_IN]
    if bad:
        raise error(f"--allow_licences {','.join(bad)}: expected a comma list of "
                    f"{', '.join(OPT_IN)}")
    refused = blocked(settings.model_names(), settings.allow_licences)
    if refused:
        classes = ",".join(sorted({lic["class"] for _, lic in refused}))
        lines = "; ".join(f"{name} ({lic['class']}: {lic['licence']})" for name, lic in refused)
        raise error(f"this run names models whose weights are not permissively licensed: "
                    f"{lines}. Pass --allow_licences {classes} to run them anyway, or choose "
                    f"permissive models (python -m beam_anon.models list shows each licence)")


def record(settings) -> dict[str, dict]:
    """``{model: licence_of(model)}`` for every model the run loads (for the manifest); a name
    the registry does not know (a test's stand-in detector) is recorded as ``unknown``."""
    from beam_anon.models import ModelError

    out = {}
    for name in dict.fromkeys(settings.model_names()):
        try:
            out[name] = licence_of(name)
        except ModelError:
            out[name] = {"class": "unknown", "licence": "not a registry model"}
    return out
