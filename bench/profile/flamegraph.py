"""A flame graph of collapsed stacks as one SVG (`render`): each frame a box as wide as the
share of samples whose stack passes through it there, callers below callees, siblings in
alphabetical order (as Brendan Gregg's flamegraph.pl draws them; its x axis is not time).

The SVG has no script, no id and nothing outside itself: it opens alone in a browser and sits
inline in report.html beside other ones. Each box's tooltip (`<title>`) gives the frame, its
samples and its share. Colours come from a hash of the function's name, so a function has the
same colour in every graph. Frames narrower than `min_fraction` of the samples are left out
(their callees with them), which keeps a graph of thousands of stacks to a few hundred boxes.

Standard library only.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape

from bench.profile.stacks import Stack

WIDTH = 1200
FRAME_HEIGHT = 16
FONT_SIZE = 11
CHAR_WIDTH = 6.6  # px of one character of FONT_SIZE monospace, for a box's label to fit
PAD = 10
TITLE_HEIGHT = 24
MIN_FRACTION = 0.002  # 2.4 px of WIDTH: a narrower box is no more than a line
ROOT = "all"


@dataclass(frozen=True)
class Frame:
    """One box: a frame at `depth` (0 the root), from `start` to `start + width` as fractions
    of all the samples, which `samples` of them saw."""

    name: str
    depth: int
    start: float
    width: float
    samples: int


@dataclass
class _Node:
    samples: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(stacks: Mapping[Stack, int]) -> _Node:
    root = _Node()
    for stack, count in stacks.items():
        if count <= 0:
            continue
        root.samples += count
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, _Node())
            node.samples += count
    return root


def layout(stacks: Mapping[Stack, int], min_fraction: float = MIN_FRACTION) -> list[Frame]:
    """The boxes of the flame graph of `stacks`, the root (ROOT, every sample) first; empty
    when there is no sample."""
    root = _tree(stacks)
    if root.samples == 0:
        return []
    total = root.samples
    frames: list[Frame] = []
    todo: list[tuple[str, _Node, int, float]] = [(ROOT, root, 0, 0.0)]
    while todo:
        name, node, depth, start = todo.pop()
        width = node.samples / total
        frames.append(Frame(name, depth, start, width, node.samples))
        offset = start
        below = []
        for child_name in sorted(node.children):
            child = node.children[child_name]
            if child.samples / total >= min_fraction:
                below.append((child_name, child, depth + 1, offset))
            offset += child.samples / total
        todo.extend(reversed(below))  # drawn in order: first child first
    return frames


def _color(name: str) -> str:
    """A warm colour for `name` (flamegraph.pl's "hot" palette), the same for it everywhere."""
    h = zlib.crc32(name.encode("utf-8"))
    v1, v2, v3 = (h & 0xFF) / 255, ((h >> 8) & 0xFF) / 255, ((h >> 16) & 0xFF) / 255
    return f"rgb({205 + int(50 * v3)},{int(230 * v1)},{int(55 * v2)})"


def _label(name: str, px: float) -> str:
    """`name` shortened to fit a box `px` wide, '' when not even three characters fit."""
    fits = int((px - 6) / CHAR_WIDTH)
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[: fits - 2] + ".."


# What XML 1.0 cannot hold, even escaped: control characters, lone surrogates, U+FFFE/F.
# py-spy --nonblocking reads a stack that changes under it now and then as garbage bytes,
# e.g. a frame named "\U000303a0 (\x00)", which would make the whole SVG unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """`text` escaped for XML, the characters XML cannot hold shown as U+FFFD."""
    return _NOT_XML.sub("\ufffd", escape(text))


def render(stacks: Mapping[Stack, int], title: str, min_fraction: float = MIN_FRACTION) -> str:
    """The flame graph of `stacks` as a standalone SVG document, titled `title`."""
    frames = layout(stacks, min_fraction)
    total = frames[0].samples if frames else 0
    depth = max((f.depth for f in frames), default=0) + 1
    height = TITLE_HEIGHT + depth * FRAME_HEIGHT + 2 * PAD
    span = WIDTH - 2 * PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" '
        f'font-size="{FONT_SIZE}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{WIDTH / 2:g}" y="{PAD + 12}" text-anchor="middle" font-size="13" '
        f'font-family="sans-serif">{_xml(title)}</text>',
    ]
    if not frames:
        out.append(
            f'<text x="{WIDTH / 2:g}" y="{TITLE_HEIGHT + PAD + 12}" text-anchor="middle">'
            "no samples</text>"
        )
    for f in frames:
        x = PAD + f.start * span
        px = f.width * span
        y = height - PAD - (f.depth + 1) * FRAME_HEIGHT
        shown = f"{ROOT} ({total:,} samples)" if f.depth == 0 else f.name
        tip = f"{f.name} ({f.samples:,} samples, {100 * f.samples / total:.2f}%)"
        out.append(
            f"<g><title>{_xml(tip)}</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{px:.2f}" height="{FRAME_HEIGHT - 1}" '
            f'fill="{_color(f.name)}" rx="2"/>'
        )
        if label := _label(shown, px):
            out.append(f'<text x="{x + 3:.2f}" y="{y + FRAME_HEIGHT - 4}">{_xml(label)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
