"""A small, fully deterministic world of captioned images: one or two flat shapes on a plain background.

Every sample is a pure function of ``(seed, split, index)``: the scene (background, objects with shape, colour,
size and position), its 64x64 RGB rendering and a caption drawn from varied templates and paraphrases::

    world = ShapesWorld(seed=0)
    sample = world.sample(3, "train")
    sample.image          # (64, 64, 3) uint8
    sample.caption        # "grey background with a big red circle in the top-left corner"
    sample.scene.objects  # (Obj(shape='circle', colour='red', size='large', position='top left', ...),)

Some shape-colour pairs (``HELD_OUT_PAIRS``) never appear in the ``train`` and ``val`` splits; every scene of
the ``heldout`` split contains at least one of them, so evaluation there measures compositional
generalisation. The ``codec`` split draws from every pair: it is the training set of the autoencoder only, a
generic pixel codec that (like Stable Diffusion's VAE in the real UniDiffuser) learns images without their
captions; everything that links text and images is trained on ``train``. ``parse_caption`` reads the world's attributes back out of any caption (for the evaluator).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 30),
    "purple": (160, 40, 200),
    "cyan": (30, 200, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "black": (16, 16, 16),
    "white": (240, 240, 240),
}
SIZES: dict[str, int] = {"small": 16, "large": 26}  # nominal side / diameter in pixels at 64 px
POSITIONS: dict[str, tuple[int, int]] = {  # nominal centre (x, y) in pixels at 64 px
    "top left": (16, 16),
    "top right": (48, 16),
    "center": (32, 32),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
}
CORNERS = ("top left", "top right", "bottom left", "bottom right")
# one per shape, each colour at most once: what the model never sees together in training
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("circle", "blue"), ("square", "yellow"), ("triangle", "red"), ("diamond", "green")}
)
SPLITS = ("train", "val", "heldout", "codec")
TWO_OBJECT_PROBABILITY = 0.4
POSITION_JITTER = 1
SIZE_JITTER = 1

# --- caption paraphrases ---------------------------------------------------------------------------------------
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
BACKGROUND_WORDS = {"grey": ("grey", "gray"), "black": ("black",), "white": ("white",)}
POSITION_PHRASES = {
    "top left": ("at the top left", "in the top-left corner", "in the upper left"),
    "top right": ("at the top right", "in the top-right corner", "in the upper right"),
    "bottom left": ("at the bottom left", "in the bottom-left corner", "in the lower left"),
    "bottom right": ("at the bottom right", "in the bottom-right corner", "in the lower right"),
    "center": ("in the center", "in the middle"),
}
ONE_OBJECT_TEMPLATES = (
    "{o1} {p1} on a {bg} background",
    "{bg} background with {o1} {p1}",
    "{o1} {p1}, {bg} background",
    "there is {o1} {p1} on a {bg} background",
    "a picture of {o1} {p1} on {bg}",
)
TWO_OBJECT_TEMPLATES = (
    "{o1} {p1} and {o2} {p2} on a {bg} background",
    "{bg} background with {o1} {p1} and {o2} {p2}",
    "{o1} {p1}, {o2} {p2}, {bg} background",
    "{o1} {p1} and {o2} {p2} on {bg}",
)


@dataclass(frozen=True)
class Obj:
    """One shape: its attributes and its exact geometry (centre and side in pixels)."""

    shape: str
    colour: str
    size: str
    position: str
    cx: float = 0.0
    cy: float = 0.0
    side: float = 0.0

    @property
    def pair(self) -> tuple[str, str]:
        return (self.shape, self.colour)


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image."""

    background: str
    objects: tuple[Obj, ...]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return sorted(o.pair for o in self.objects)


@dataclass(frozen=True)
class Sample:
    scene: Scene
    caption: str
    image: np.ndarray = field(repr=False)
    split: str = "train"
    index: int = 0


def _rng(*key: object) -> np.random.Generator:
    digest = hashlib.sha256(":".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def allowed_pairs(held_out: frozenset[tuple[str, str]] = HELD_OUT_PAIRS) -> list[tuple[str, str]]:
    return [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in held_out]


class ShapesWorld:
    """Deterministic, seeded sampler of (scene, image, caption) for the splits ``train``, ``val``, ``heldout``."""

    def __init__(
        self,
        seed: int = 0,
        *,
        held_out: frozenset[tuple[str, str]] | set[tuple[str, str]] = HELD_OUT_PAIRS,
        resolution: int = RESOLUTION,
    ):
        self.seed = int(seed)
        self.held_out = frozenset(held_out)
        self.resolution = resolution
        self.train_pairs = allowed_pairs(self.held_out)
        self.held_out_pairs = sorted(self.held_out)

    # --- scenes ----------------------------------------------------------------------------------------------
    def scene(self, index: int, split: str = "train") -> Scene:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = _rng("scene", self.seed, split, index)
        background = str(rng.choice(list(BACKGROUNDS)))
        two = rng.random() < TWO_OBJECT_PROBABILITY
        pool = self.train_pairs if split in ("train", "val") else self.train_pairs + self.held_out_pairs
        firsts = self.held_out_pairs if split == "heldout" else pool  # heldout: always one unseen pair
        first = firsts[rng.integers(len(firsts))]
        pairs = [first]
        if two:
            others = [p for p in pool if p != first]
            pairs.append(others[rng.integers(len(others))])
            positions = [str(p) for p in rng.choice(CORNERS, size=2, replace=False)]
        else:
            positions = [str(rng.choice(list(POSITIONS)))]
        objects = []
        for (shape, colour), position in zip(pairs, positions, strict=True):
            size = str(rng.choice(list(SIZES)))
            x, y = POSITIONS[position]
            jx, jy = rng.integers(-POSITION_JITTER, POSITION_JITTER + 1, size=2)
            side = SIZES[size] + int(rng.integers(-SIZE_JITTER, SIZE_JITTER + 1))
            scale = self.resolution / RESOLUTION
            objects.append(
                Obj(shape, colour, size, position, (x + jx) * scale, (y + jy) * scale, side * scale)
            )
        if two and rng.random() < 0.5:  # captions name the objects in either order
            objects.reverse()
        return Scene(background, tuple(objects))

    def caption(self, scene: Scene, variant: int = 0) -> str:
        """One of the scene's paraphrases (``variant`` picks it deterministically)."""
        rng = _rng("caption", self.seed, scene, variant)
        return caption_for(scene, rng)

    def sample(self, index: int, split: str = "train", *, caption_variant: int = 0) -> Sample:
        scene = self.scene(index, split)
        caption = self.caption(scene, hash_index(split, index, caption_variant))
        return Sample(scene, caption, render(scene, self.resolution), split, index)

    def batch(self, split: str, start: int, count: int) -> tuple[np.ndarray, list[str], list[Scene]]:
        """Images (count, H, W, 3) uint8, captions and scenes of samples ``start .. start + count - 1``."""
        samples = [self.sample(i, split) for i in range(start, start + count)]
        return (
            np.stack([s.image for s in samples]),
            [s.caption for s in samples],
            [s.scene for s in samples],
        )

    def all_captions(self, scene: Scene) -> list[str]:
        """Every paraphrase of a scene (templates x word choices), sorted; for vocabularies and tests."""
        return sorted(_all_captions(scene))


def hash_index(split: str, index: int, variant: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{split}:{index}:{variant}".encode()).digest()[:4], "little")


def _object_phrase(obj: Obj, rng: np.random.Generator) -> tuple[str, str]:
    size = SIZE_WORDS[obj.size][rng.integers(len(SIZE_WORDS[obj.size]))]
    phrases = POSITION_PHRASES[obj.position]
    return f"a {size} {obj.colour} {obj.shape}", phrases[rng.integers(len(phrases))]


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    templates = ONE_OBJECT_TEMPLATES if len(scene.objects) == 1 else TWO_OBJECT_TEMPLATES
    template = templates[rng.integers(len(templates))]
    words = BACKGROUND_WORDS[scene.background]
    values = {"bg": words[rng.integers(len(words))]}
    for i, obj in enumerate(scene.objects, start=1):
        values[f"o{i}"], values[f"p{i}"] = _object_phrase(obj, rng)
    return template.format(**values)


def _all_captions(scene: Scene) -> set[str]:
    templates = ONE_OBJECT_TEMPLATES if len(scene.objects) == 1 else TWO_OBJECT_TEMPLATES
    options: list[list[tuple[str, str]]] = [[("bg", w) for w in BACKGROUND_WORDS[scene.background]]]
    for i, obj in enumerate(scene.objects, start=1):
        options.append([(f"o{i}", f"a {s} {obj.colour} {obj.shape}") for s in SIZE_WORDS[obj.size]])
        options.append([(f"p{i}", p) for p in POSITION_PHRASES[obj.position]])
    combos: list[dict[str, str]] = [{}]
    for choice in options:
        combos = [{**c, k: v} for c in combos for k, v in choice]
    return {t.format(**c) for t in templates for c in combos}


def vocabulary_corpus() -> list[str]:
    """Captions covering every word and phrase the world can write (all attributes, templates, paraphrases)."""
    corpus: set[str] = set()
    backgrounds = list(BACKGROUNDS)
    for i, (shape, colour) in enumerate((s, c) for s in SHAPES for c in COLOURS):
        background = backgrounds[i % len(backgrounds)]
        for size in SIZES:
            corpus |= _all_captions(Scene(background, (Obj(shape, colour, size, "center"),)))
    for i, (a, b) in enumerate((a, b) for a in CORNERS for b in CORNERS if a < b):
        objects = (Obj(SHAPES[i % 4], "red", "small", a), Obj(SHAPES[(i + 1) % 4], "blue", "large", b))
        corpus |= _all_captions(Scene(backgrounds[i % len(backgrounds)], objects))
    return sorted(corpus)


# --- rendering -------------------------------------------------------------------------------------------------
def _shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    h = side / 2
    if shape == "triangle":  # apex up, as wide as it is tall
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    return None


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """The scene as a (resolution, resolution, 3) uint8 image, anti-aliased by supersampling."""
    k = SUPERSAMPLE
    canvas = Image.new("RGB", (resolution * k, resolution * k), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        colour = COLOURS[obj.colour]
        cx, cy, half = obj.cx * k, obj.cy * k, obj.side * k / 2
        box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
        if obj.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif obj.shape == "square":
            draw.rectangle(box, fill=colour)
        elif (polygon := _shape_polygon(obj.shape, cx, cy, obj.side * k)) is not None:
            draw.polygon(polygon, fill=colour)
    small = canvas.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).copy()


# --- reading captions back -------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z]+")
_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_BACKGROUND_OF = {w: bg for bg, words in BACKGROUND_WORDS.items() for w in words}
_VERTICAL = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_HORIZONTAL = {"left": "left", "right": "right"}


@dataclass
class ParsedObject:
    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None

    @property
    def pair(self) -> tuple[str, str | None]:
        return (self.shape, self.colour)


@dataclass
class ParsedCaption:
    objects: list[ParsedObject]
    background: str | None

    @property
    def pairs(self) -> list[tuple[str, str | None]]:
        return sorted((o.pair for o in self.objects), key=lambda p: (p[0], p[1] or ""))


def parse_caption(text: str) -> ParsedCaption:
    """The world's attributes named in ``text``: each shape word closes an object; the colour and size words
    before it (since the previous shape) belong to it, the position words after it (up to the next object's
    words) too. Background: the first background colour word."""
    words = _WORD.findall(text.lower())
    objects: list[ParsedObject] = []
    background = None
    colour = size = None
    position_words: list[str] = []

    def close_position() -> None:
        if objects and position_words:
            objects[-1].position = _position(position_words)

    for word in words:
        if word in COLOURS:
            close_position()
            position_words = []
            colour = word
        elif word in _SIZE_OF:
            close_position()
            position_words = []
            size = _SIZE_OF[word]
        elif word in SHAPES:
            close_position()
            position_words = []
            objects.append(ParsedObject(word, colour, size))
            colour = size = None
        elif word in _BACKGROUND_OF:
            if background is None:
                background = _BACKGROUND_OF[word]
        elif word in _VERTICAL or word in _HORIZONTAL or word in ("center", "centre", "middle"):
            position_words.append(word)
    close_position()
    return ParsedCaption(objects, background)


def _position(words: list[str]) -> str | None:
    if any(w in ("center", "centre", "middle") for w in words):
        return "center"
    vertical = next((_VERTICAL[w] for w in words if w in _VERTICAL), None)
    horizontal = next((_HORIZONTAL[w] for w in words if w in _HORIZONTAL), None)
    if vertical and horizontal:
        return f"{vertical} {horizontal}"
    return None
