"""A folder of photos named by item id, as the data sets ship them: flat (``DIR/<id>.jpg``) or nested
(``DIR/<any folders>/<id>.jpg``, e.g. H&M's ``images/010/0108775015.jpg``), the id with or without
zero padding. The folder is indexed once; a lookup is a dictionary hit.

A folder that does not exist, or in which no catalog id is found, is one line naming the layout
expected and one file name it looked for (:meth:`ImageFolder.check_found`, once the source has read
its catalog).

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
        self.missing = not root.is_dir()
        for p in sorted(root.rglob("*")) if not self.missing else []:
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self.by_name.setdefault(p.name, p)
                self.by_key.setdefault(p.stem, p)
                self.by_key.setdefault(_unpadded(p.stem), p)
                self.nested |= p.parent != root
        self.hits = 0
        self.looked_for: str | None = None

    @classmethod
    def open(cls, path: str | Path | None) -> ImageFolder | None:
        """None for no folder. A path that is not a folder is reported by :meth:`check_found`, once
        the source has said which file it looked for."""
        return cls(Path(path)) if path is not None else None

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
        """Raise when the folder does not exist, or was searched and holds no photo of any catalog item."""
        example = f"looked for e.g. {self.looked_for}" if self.looked_for else "e.g. <id>.jpg"
        if self.missing:
            what = "no such images folder" if not self.root.exists() else "not a folder"
            raise DataError(f"{what}: expected {LAYOUT}; {example}", file=str(self.root))
        if self.looked_for is not None and self.hits == 0:
            some = next(iter(self.by_name), None)
            has = f"it has {len(self.by_name)} photos, e.g. {some}" if some else "it has no photos"
            raise DataError(f"no photo of any catalog item: expected {LAYOUT}; {example} ({has})",
                            file=str(self.root))
