"""Image folders: ``root/<class name>/*.jpg|png``, the layout most fine-tuning users have on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jtl.data._tfds import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageFolderSource:
    """A random-access source over ``root/<class>/<image>``; classes are the sorted sub-directory names.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.new("RGB", (5, 4)).save(root / name / "a.png")
    >>> source = ImageFolderSource(root)
    >>> source.classes, len(source), source[1]["image"].shape, int(source[1]["label"])
    (['cat', 'dog'], 2, (4, 5, 3), 1)
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root}: no such directory")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        missing = sorted(set(self.classes) - set(found))
        if missing or not self.classes:
            raise DataError(f"image folder {self.root}: class directories {missing or '(none)'} not found")
        self.files: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            images = sorted(p for p in (self.root / name).iterdir() if p.suffix.lower() in EXTENSIONS)
            if not images:
                raise DataError(f"image folder {self.root / name}: no images ({', '.join(EXTENSIONS)})")
            self.files.extend((path, label) for path in images)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from PIL import Image

        path, label = self.files[index]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as e:
            raise DataError(f"{path}: not a readable image ({e})") from e
        return {"image": pixels, "label": np.int32(label)}
