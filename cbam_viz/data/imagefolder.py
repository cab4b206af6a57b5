"""Photo folders: ImageFolder splits (one sub-folder per class) and ImageNet's flat validation folder.

A photo root holds `train/` (ImageFolder) and `val/` (ImageFolder, or the validation images themselves with
`LOC_val_solution.csv` in `val/` or the root, whose `PredictionString` gives each image's synset and boxes).
Classes are ordered as `torchvision.datasets.ImageFolder` orders them (its own `find_classes` / `make_dataset`).
Readable class names come from `LOC_synset_mapping.txt` or `words.txt` in the root ("n01440764 tench, Tinca
tinca" -> "tench"), else, for exactly 1000 ImageNet synsets, from torchvision's ImageNet category list, else they
are the folder names.

Images are decoded by `cbam_viz.io.images.load_image`. In training an unreadable image is replaced by the next
readable image of its class (in sample order), so a long run never stops on one bad file and item i is the same in
every process and after a resume; in evaluation it is left out. Items carry a note naming the unreadable file, so the
process that reads the batches (not the loader worker that met it) counts and reports them.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

from cbam_viz.data.transforms import PREPROCESS, eval_transform, item_seed, seeded, train_transform
from cbam_viz.errors import CbamVizError
from cbam_viz.io.images import ImageError, load_image

SOLUTION_CSV = "LOC_val_solution.csv"
MAPPING_FILES = ("LOC_synset_mapping.txt", "words.txt")
SYNSET = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000
SHOWN_PATHS = 3  # unreadable files named in a report
UNREADABLE = -1  # the label of an evaluation item whose image could not be decoded (its pixels are zeros)
ORDER_STREAM = 4  # the seeds of the training order, apart from the items' seeds (transforms.ITEM_STREAM)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the original image's pixels


class PhotoFolderError(CbamVizError):
    """A photo folder whose layout, labels or images cannot be used."""


@dataclass(frozen=True)
class PhotoSample:
    """One image of a split: its path, its path relative to the split folder, its label and, from the ImageNet
    solution file, the boxes of its class."""

    path: str
    rel: str
    label: int
    boxes: tuple[Box, ...] = ()


@dataclass
class PhotoSplit:
    """A split of a photo folder: its samples in a fixed order, and the classes (ids and readable names)."""

    root: Path
    name: str
    layout: str  # "imagefolder" or "imagenet-flat"
    classes: list[str]  # class ids: folder names or synsets, in label order
    class_names: list[str]  # readable names, in label order
    samples: list[PhotoSample]
    unreadable: dict[str, str] = field(default_factory=dict)  # rel -> reason, as met in this process
    _members: dict[int, list[int]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> Image.Image:
        """Sample i's image as RGB; ImageError when it cannot be decoded."""
        return load_image(self.samples[i].path, name=self.samples[i].rel)

    def load_readable(self, i: int) -> tuple[Image.Image, int]:
        """(image, index) of sample i, or of the next readable sample of its class when i is unreadable."""
        members = self.members(self.samples[i].label)
        start = members.index(i)
        for k in range(len(members)):
            j = members[(start + k) % len(members)]
            if self.samples[j].rel in self.unreadable:  # known bad here: not decoded again
                continue
            try:
                return self.load(j), j
            except ImageError as err:
                self.unreadable[self.samples[j].rel] = str(err)
        first = self.samples[members[0]].rel
        raise PhotoFolderError(
            f"class {self.classes[self.samples[i].label]!r} of {self.root / self.name} has no readable image "
            f"({len(members)} file(s), e.g. {first}: {self.unreadable[first]})"
        )

    def members(self, label: int) -> list[int]:
        """Indices of the samples of class `label`, in sample order."""
        if self._members is None:
            self._members = {}
            for k, sample in enumerate(self.samples):
                self._members.setdefault(sample.label, []).append(k)
        return self._members.get(label, [])

    def note(self, i: int) -> str:
        """"path (reason)" of sample i if it was found unreadable here, else ""."""
        rel = self.samples[i].rel
        return f"{rel} ({self.unreadable[rel]})" if rel in self.unreadable else ""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_members": None}  # rebuilt where needed: cheaper than pickling it


def is_photo_root(root: Path) -> bool:
    """Whether `root` looks like a photo folder (it has a train/ folder); `open_split` says what else is wrong."""
    return (root / "train").is_dir()


def is_imagenet(classes: list[str]) -> bool:
    """Whether the class ids are 1000 ImageNet synsets (n + 8 digits)."""
    return len(classes) == IMAGENET_CLASSES and all(SYNSET.fullmatch(c) for c in classes)


def open_split(root: str | Path, split: str, classes: list[str] | None = None) -> PhotoSplit:
    """Split `split` of the photo root `root`. Its classes are `classes` (the train split's) if given, else its own
    class folders (ImageFolder) or its solution file's synsets (flat), sorted."""
    root = Path(root).expanduser()
    folder = root / split
    if not folder.is_dir():
        raise PhotoFolderError(f"{root} has no {split}/ folder: a photo folder needs train/ and val/ (see --help)")
    csv_path = next((p for p in (folder / SOLUTION_CSV, root / SOLUTION_CSV) if p.is_file()), None)
    if csv_path is not None and any(_is_image(p) for p in folder.iterdir()):
        layout, samples, classes = "imagenet-flat", *_flat_samples(folder, csv_path, classes)
    elif any(p.is_dir() for p in folder.iterdir()):
        layout, samples, classes = "imagefolder", *_folder_samples(folder, classes)
    else:
        raise PhotoFolderError(
            f"{folder} has neither class sub-folders (ImageFolder) nor images labelled by {SOLUTION_CSV} "
            f"(in {folder} or {root})"
        )
    if not samples:
        raise PhotoFolderError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return PhotoSplit(root, split, layout, classes, readable_names(root, classes), samples)


def _is_image(path: Path) -> bool:
    return path.is_file() and has_file_allowed_extension(path.name, IMG_EXTENSIONS)


def _folder_samples(folder: Path, classes: list[str] | None) -> tuple[list[PhotoSample], list[str]]:
    """ImageFolder samples (torchvision's order) and the class ids they index: the folder's own classes, each with
    an image, or the given ones (another split's), of which some may have no folder here."""
    try:
        own, _ = find_classes(folder)
    except FileNotFoundError as err:  # torchvision: no class folder at all
        raise PhotoFolderError(f"{folder}: {err}") from None
    follows_other_split = classes is not None
    classes = classes if follows_other_split else own
    extra = sorted(set(own) - set(classes))
    if extra:
        raise PhotoFolderError(
            f"{folder} has class folders that train/ lacks: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
        )
    try:
        found = make_dataset(folder, {c: k for k, c in enumerate(classes)}, IMG_EXTENSIONS,
                             allow_empty=follows_other_split)
    except FileNotFoundError as err:  # torchvision: a class folder without images
        raise PhotoFolderError(f"{folder}: {err}") from None
    samples = [PhotoSample(path, Path(path).relative_to(folder).as_posix(), label) for path, label in found]
    return samples, list(classes)


def _flat_samples(folder: Path, csv_path: Path, classes: list[str] | None) -> tuple[list[PhotoSample], list[str]]:
    """The images of a flat folder that the solution file labels, sorted by file name, and the class ids."""
    rows = read_solution(csv_path)
    files = {p.stem: p for p in folder.iterdir() if _is_image(p)}
    if classes is None:
        classes = sorted({synset for boxes in rows.values() for synset, _ in boxes})
    index = {c: k for k, c in enumerate(classes)}
    unknown = sorted({s for image_id, boxes in rows.items() if image_id in files for s, _ in boxes} - set(index))
    if unknown:
        raise PhotoFolderError(f"{csv_path} names classes that train/ lacks: {', '.join(unknown[:5])}")
    samples = []
    for stem in sorted(set(files) & set(rows)):
        synset = rows[stem][0][0]
        boxes = tuple(box for s, box in rows[stem] if s == synset)
        samples.append(PhotoSample(str(files[stem]), files[stem].name, index[synset], boxes))
    return samples, list(classes)


def read_solution(csv_path: Path) -> dict[str, list[tuple[str, Box]]]:
    """ImageNet's LOC_val_solution.csv: {ImageId: [(synset, (x0, y0, x1, y1)), ...]} in the file's order."""
    rows: dict[str, list[tuple[str, Box]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise PhotoFolderError(f"{csv_path} needs the columns ImageId and PredictionString")
        for line, row in enumerate(reader, start=2):
            words = (row["PredictionString"] or "").split()
            try:
                if not words or len(words) % 5:
                    raise ValueError
                rows[row["ImageId"]] = [
                    (words[k], (float(words[k + 1]), float(words[k + 2]), float(words[k + 3]), float(words[k + 4])))
                    for k in range(0, len(words), 5)
                ]
            except ValueError:
                raise PhotoFolderError(
                    f"{csv_path}, line {line}: PredictionString must be groups of 'synset x0 y0 x1 y1'"
                ) from None
    return rows


def readable_names(root: Path, classes: list[str]) -> list[str]:
    """Readable class names: from a mapping file in `root`, torchvision's ImageNet list, or the ids themselves."""
    for name in MAPPING_FILES:
        path = root / name
        if path.is_file():
            mapping = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    mapping[parts[0]] = parts[1].split(",")[0].strip()
            return [mapping.get(c) or c for c in classes]
    if is_imagenet(classes):
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return list(classes)


def check_classes(split: PhotoSplit) -> None:
    """Raise PhotoFolderError unless every class of `split` has a readable image (decodes one per class)."""
    for label in range(len(split.classes)):
        members = split.members(label)
        if members:
            split.load_readable(members[0])


class PhotoDataset(Dataset):
    """Items (uint8 3 x size x size, label, note) of the samples `indices` (default all) of a split under a fixed
    preprocessing ("center" or "whole"). An unreadable image gives zeros, label UNREADABLE and a note naming it."""

    def __init__(self, split: PhotoSplit, size: int, preprocess: str = "center",
                 indices: Iterable[int] | None = None) -> None:
        if preprocess not in PREPROCESS:
            raise PhotoFolderError(f"preprocess must be one of {', '.join(PREPROCESS)}, not {preprocess!r}")
        self.split, self.size, self.preprocess = split, int(size), preprocess
        self.indices = list(range(len(split)) if indices is None else indices)
        self.transform = eval_transform(self.size, preprocess)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        k = self.indices[i]
        try:
            return self.transform(self.split.load(k)), self.split.samples[k].label, ""
        except ImageError as err:
            return (torch.zeros((3, self.size, self.size), dtype=torch.uint8), UNREADABLE,
                    f"{self.split.samples[k].rel} ({err})")


class PhotoTrainStream(Dataset):
    """`length` training items: item i is sample perm_e[i % n] of epoch e = i // n (a permutation seeded by
    (seed, e)), randomly cropped, flipped and augmented with a seed of (seed, i) alone."""

    def __init__(self, split: PhotoSplit, size: int, length: int, seed: int = 0, augment: str = "none") -> None:
        self.split, self.size, self.length, self.seed = split, int(size), int(length), int(seed)
        self.augment = augment
        self.transform = train_transform(self.size, augment)
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.length

    def sample_index(self, i: int) -> int:
        """The split sample that stream item i shows."""
        epoch, pos = divmod(i, len(self.split))
        if self._perm is None or self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(item_seed(self.seed, epoch, ORDER_STREAM))
            self._perm = (epoch, torch.randperm(len(self.split), generator=generator))
        return int(self._perm[1][pos])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        """(uint8 3 x size x size, label, note): the note names sample k when it was unreadable and replaced."""
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} out of range for {self.length} training images")
        k = self.sample_index(i)
        image, _ = self.split.load_readable(k)
        return seeded(self.transform, image, item_seed(self.seed, i)), self.split.samples[k].label, self.split.note(k)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_perm": None}


def unreadable_line(where: str, notes: list[str], what: str) -> str:
    """One report of unreadable images: their count and the first few, e.g. "3 unreadable image(s) left out"."""
    more = " ..." if len(notes) > SHOWN_PATHS else ""
    return f"{where}: {len(notes)} unreadable image(s) {what}: {'; '.join(notes[:SHOWN_PATHS])}{more}"
