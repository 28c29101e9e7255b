"""A synthetic camera stream over real photos: a window that circles and zooms over one photo.

The motion is synthetic; the pixels are real. The photos are the sample images that ship in the
scikit-image and matplotlib wheels (three portraits, a coffee cup and a cat), so the stream is
reproducible offline. Each frame is the photo seen through a 4:3 window that goes once round an
ellipse while zooming in and out (half the photo's size at the start and end, all of it halfway),
resampled to ``size``. Faces therefore drift in and out of view and change scale, which is what a
detector sees from a slowly moving camera, without the blur, noise and lighting changes a real
camera adds.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["PHOTOS", "frames", "pan", "photo", "photo_path"]

#: name -> (package, path inside the package). Faces in the first three; none in the others.
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "cameraman": ("skimage", "data/camera.png"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "coffee": ("skimage", "data/coffee.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
}


def photo_path(name: str) -> Path:
    """Where a wheel keeps the photo (found without importing the package)."""
    if name not in PHOTOS:
        raise ValueError(f"photo {name!r} is unknown; choose from {sorted(PHOTOS)}")
    package, inner = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"photo {name!r} ships in the {package} wheel, which is not installed; "
            "install the dnn extra: pip install -e '.[dnn]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise FileNotFoundError(f"photo {name!r} is missing at {path}; reinstall {package}")
    return path


def photo(name: str) -> np.ndarray:
    """The photo as a BGR ``uint8`` image (grey photos get three equal channels)."""
    image = cv2.imread(str(photo_path(name)), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"OpenCV cannot read {photo_path(name)}")
    return image


def pan(name: str, frames: int = 60, size: tuple[int, int] = (480, 360)) -> Iterator[np.ndarray]:
    """``frames`` BGR frames of ``size`` (width, height) panning and zooming over one photo."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    image = photo(name)
    height, width = image.shape[:2]
    out_w, out_h = size
    aspect = out_w / out_h
    full_w = min(width, height * aspect)  # the largest window of the output's aspect
    for i in range(frames):
        angle = 2.0 * math.pi * i / frames
        zoom = 0.75 - 0.25 * math.cos(angle)  # 0.5 -> 1.0 -> 0.5 of the largest window
        win_w = full_w * zoom
        win_h = win_w / aspect
        # Centre on an ellipse whose radii keep the window inside the photo.
        cx = width / 2 + (width - win_w) / 2 * math.cos(angle)
        cy = height / 2 + (height - win_h) / 2 * math.sin(angle)
        scale = out_w / win_w
        matrix = np.array(
            [[scale, 0.0, out_w / 2 - scale * cx], [0.0, scale, out_h / 2 - scale * cy]]
        )
        yield cv2.warpAffine(
            image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )


def frames(
    photo_frames: int = 120,
    photos: Sequence[str] | None = None,
    size: tuple[int, int] = (480, 360),
) -> Iterator[tuple[str, np.ndarray]]:
    """``(stream_id, BGR frame)``: each photo's pan in turn, stream ``pan_<photo>``. Source
    factory for configs: ``mlink.eval.workloads.photo_pan:frames`` (deploy/configs/pan.yaml)."""
    for name in photos if photos is not None else PHOTOS:
        for frame in pan(name, photo_frames, tuple(size)):
            yield f"pan_{name}", frame
