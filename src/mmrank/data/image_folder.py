"""A folder of photos named by item id, as the data sets ship them: flat (``DIR/<id>.jpg``) or nested
(``DIR/<any folders>/<id>.jpg``, e.g. H&M's ``images/010/0108775015.jpg``), the id with or without
zero padding. The folder is indexed once; a lookup is a dictionary hit.

A folder that does not exist, or in which no catalog id is found, is one line naming the layout
expected and one file name it looked for (:meth:`ImageFolder.check_found`).

Example::

    >>> folder = ImageFolder.open("images/")               # doctest: +SKIP
    >>> folder.find("108775015")                            # doctest: +SKIP
    '/data/hm/images/010/0108775015.jpg'
"""

from __future__ import annotations

from pathlib import Path

from mmrank.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LAYOUT = "photos named by item id: DIR/<id>.jpg or DIR/<subfolder>/<id>.jpg (.jpg, .jpeg, .png or .webp)"


def _unpadded(key: str) -> str:
    return key.lstrip("0") or "0" if key.isdigit() else key


class ImageFolder:
    """The photos under ``root`` by file stem (and by the unpadded id when the stem is digits)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_key: dict[str, Path] = {}
        self.by_name: dict[str, Path] = {}
        self.nested = False
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self.by_name.setdefault(p.name, p)
                self.by_key.setdefault(p.stem, p)
                self.by_key.setdefault(_unpadded(p.stem), p)
                self.nested |= p.parent != root
        self.hits = 0
        self.looked_for: str | None = None

    @classmethod
    def open(cls, path: str | Path | None, example: str = "<id>.jpg") -> ImageFolder | None:
        """None for no folder; a missing path or a file is one line naming the layout expected."""
        if path is None:
            return None
        p = Path(path)
        if not p.is_dir():
            what = "no such images folder" if not p.exists() else "not a folder"
            raise DataError(f"{what}: expected {LAYOUT}, e.g. {example}", file=str(p))
        return cls(p)

    @property
    def layout(self) -> str:
        return f"{self.root} ({'nested' if self.nested else 'flat'}, {len(self.by_name)} photos)"

    def find(self, key: str | int | None) -> str | None:
        """The photo of the item ``key`` (absolute path), else None."""
        if key is None:
            return None
        k = str(key).strip()
        if self.looked_for is None:
            self.looked_for = f"{k}.jpg"
        p = self.by_key.get(k) or self.by_key.get(_unpadded(k))
        if p is None:
            return None
        self.hits += 1
        return str(p.resolve())

    def file(self, name: str) -> str | None:
        """The photo with this exact file name anywhere under the folder (a download's URL name)."""
        p = self.by_name.get(name)
        if p is not None:
            self.hits += 1
        return str(p.resolve()) if p is not None else None

    def check_found(self) -> None:
        """Raise when the folder was searched and holds no photo of any catalog item."""
        if self.looked_for is not None and self.hits == 0:
            some = next(iter(self.by_name), None)
            has = f"it has {len(self.by_name)} photos, e.g. {some}" if some else "it has no photos"
            raise DataError(f"no photo of any catalog item: expected {LAYOUT}; looked for e.g. "
                            f"{self.looked_for} ({has})", file=str(self.root))
