"""Model files: JSON metadata plus one `.npz` of float arrays; no pickles anywhere.

`<dir>/anomaly-model.json` holds the format version, the feature schema per kind, the
training window, library versions, thresholds, detector parameters and the usual curves;
`<dir>/anomaly-model.npz` holds the detectors' arrays (loaded with `allow_pickle=False`)
and its sha256 is in the JSON. Loading refuses, with `ModelMismatch` naming the reason, a
model whose format, feature schema, detector version or library versions differ from
this code's, or whose arrays do not match their digest. Files are written to a temporary
name and renamed, so a crash never leaves half a model for the hub to load.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import platform
from pathlib import Path
from typing import Any, Final

import numpy as np

from anomaly.detectors import detector_from_state
from anomaly.extractor import SCHEMAS, Profiles
from anomaly.model_files import ARRAYS_NAME, META_NAME
from anomaly.protocol import DetectorState, FloatArray, JsonValue, StateMismatch, Threshold
from anomaly.training import AnomalyModel, KindModel, Scaler

FORMAT: Final = "gridwatch-anomaly-model"
FORMAT_VERSION: Final = 1
MAX_META_BYTES: Final = 256 << 20
POOLED: Final = "*"


class ModelMismatch(ValueError):
    """The model file cannot be used by this code (the message says why)."""


def library_versions() -> dict[str, str]:
    """Versions a model's scores depend on."""
    import sklearn

    try:
        ours = importlib.metadata.version("gridwatch")
    except importlib.metadata.PackageNotFoundError:
        ours = "unknown"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "gridwatch": ours,
    }


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_versions(saved: dict[str, str], current: dict[str, str]) -> None:
    """Refuse when numpy or scikit-learn differ in major.minor (fits may differ)."""
    for name in ("numpy", "scikit-learn"):
        if _minor(saved.get(name, "?")) != _minor(current[name]):
            raise ModelMismatch(
                f"model trained with {name} {saved.get(name, '?')}, this hub has "
                f"{current[name]}: retrain with `gridwatch anomaly train`"
            )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _state_json(state: DetectorState, prefix: str, arrays: dict[str, FloatArray]) -> JsonValue:
    for name, array in state.arrays.items():
        arrays[f"{prefix}|{name}"] = np.asarray(array, dtype=np.float64)
    return {
        "kind": state.kind,
        "version": state.version,
        "n_features": state.n_features,
        "params": dict(state.params),
        "arrays": list[JsonValue](sorted(state.arrays)),
    }


def save_model(model: AnomalyModel, directory: Path) -> Path:
    """Write the model into `directory` (created); return the metadata file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, FloatArray] = {}
    kinds: dict[str, JsonValue] = {}
    for kind, km in sorted(model.kinds.items()):
        devices: dict[str, JsonValue] = {}
        for device, detector in sorted(km.devices.items()):
            devices[device] = _state_json(detector.get_state(), f"{kind}|{device}", arrays)
            scaler = km.device_scalers[device]
            arrays[f"{kind}|{device}|scaler_center"] = scaler.center
            arrays[f"{kind}|{device}|scaler_scale"] = scaler.scale
        arrays[f"{kind}|{POOLED}|scaler_center"] = km.pooled_scaler.center
        arrays[f"{kind}|{POOLED}|scaler_scale"] = km.pooled_scaler.scale
        kinds[kind] = {
            "schema": list(km.schema),
            "detector": km.detector,
            "threshold": km.threshold.to_json(),
            "pooled": _state_json(km.pooled.get_state(), f"{kind}|{POOLED}", arrays),
            "devices": devices,
            "report": dict(km.report),
        }
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    blob = buffer.getvalue()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": library_versions(),
        "training": model.meta,
        "arrays_sha256": hashlib.sha256(blob).hexdigest(),
        "kinds": kinds,
        "profiles": model.profiles.to_json(),
    }
    _atomic_write(directory / ARRAYS_NAME, blob)
    meta_path = directory / META_NAME
    _atomic_write(meta_path, json.dumps(meta, indent=1, sort_keys=True, allow_nan=False).encode())
    return meta_path


def _detector(spec: Any, prefix: str, arrays: Any, width: int) -> Any:
    if not isinstance(spec, dict):
        raise ModelMismatch(f"{prefix}: detector entry is not an object")
    names = spec.get("arrays", [])
    state = DetectorState(
        kind=str(spec["kind"]),
        version=int(spec["version"]),
        n_features=spec["n_features"],
        params=spec["params"],
        arrays={name: np.asarray(arrays[f"{prefix}|{name}"], dtype=np.float64) for name in names},
    )
    if state.n_features is not None and state.n_features != width:
        raise ModelMismatch(f"{prefix}: detector has {state.n_features} features, schema {width}")
    try:
        return detector_from_state(state)
    except StateMismatch as exc:
        raise ModelMismatch(f"{prefix}: {exc}") from exc


def load_model(directory: Path) -> AnomalyModel:
    """Read and check a model; raise `ModelMismatch` (or FileNotFoundError) if unusable."""
    meta_path = directory / META_NAME
    arrays_path = directory / ARRAYS_NAME
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise ModelMismatch(f"{meta_path}: larger than {MAX_META_BYTES} bytes")
    try:
        meta = json.loads(meta_path.read_bytes())
    except ValueError as exc:
        raise ModelMismatch(f"{meta_path}: not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelMismatch(f"{meta_path}: not a GridWatch anomaly model")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelMismatch(
            f"{meta_path}: model format {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: retrain with `gridwatch anomaly train`"
        )
    check_versions(meta.get("versions", {}), library_versions())
    blob = arrays_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("arrays_sha256"):
        raise ModelMismatch(f"{arrays_path}: sha256 does not match the model's metadata")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: np.asarray(npz[name], dtype=np.float64) for name in npz.files}
        kinds: dict[str, KindModel] = {}
        for kind, spec in meta["kinds"].items():
            expected = SCHEMAS.get(kind)
            if expected is None:
                raise ModelMismatch(f"model has a kind {kind!r} this hub does not extract")
            if tuple(spec["schema"]) != expected:
                raise ModelMismatch(
                    f"{kind}: model feature schema {spec['schema']} differs from this code's "
                    f"{list(expected)}: retrain with `gridwatch anomaly train`"
                )
            width = len(expected)
            devices = {
                device: _detector(d, f"{kind}|{device}", arrays, width)
                for device, d in spec["devices"].items()
            }
            scalers = {
                device: Scaler(
                    arrays[f"{kind}|{device}|scaler_center"],
                    arrays[f"{kind}|{device}|scaler_scale"],
                )
                for device in devices
            }
            kinds[kind] = KindModel(
                kind=kind,
                schema=expected,
                detector=str(spec["detector"]),
                pooled=_detector(spec["pooled"], f"{kind}|{POOLED}", arrays, width),
                pooled_scaler=Scaler(
                    arrays[f"{kind}|{POOLED}|scaler_center"],
                    arrays[f"{kind}|{POOLED}|scaler_scale"],
                ),
                devices=devices,
                device_scalers=scalers,
                threshold=Threshold.from_json(spec["threshold"]),
                report=dict(spec.get("report", {})),
            )
        profiles = Profiles.from_json(meta["profiles"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelMismatch):
            raise
        raise ModelMismatch(f"{meta_path}: malformed model ({type(exc).__name__}: {exc})") from exc
    return AnomalyModel(kinds, profiles, dict(meta.get("training", {})))
