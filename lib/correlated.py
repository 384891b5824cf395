"""A high-correlation training set made from an ordinary one, the way Kitchen-HC is high-correlation.

Kitchen-HC holds few physical objects, each seen in many video frames from nearby camera poses:
its images come in large groups of near-duplicates. Here a few base images per class each become a
fixed set of views, every view a small zoom (a crop when enlarging), a shift of a few pixels and a
brightness change of the same base. Everything is drawn from one seeded generator, so the set is
the same on every machine.
"""
import numpy as np
from PIL import Image

ZOOM = (0.85, 1.2)        # < 1: the object seen from further away; > 1: a crop of its centre
SHIFT = 3.0               # pixels, each axis, either way
BRIGHTNESS = (0.7, 1.3)   # factor on every pixel


def pick_bases(labels, num_classes, per_class, rng):
    """Indices [num_classes * per_class] of the base images, class by class, sorted within a class."""
    picks = []
    for c in range(num_classes):
        members = np.where(labels == c)[0]
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than the {per_class} bases asked for")
        picks.append(np.sort(rng.choice(members, per_class, replace=False)))
    return np.concatenate(picks)


def render_view(image, zoom, shift_x, shift_y, brightness):
    """One view of a grey image [H, W] uint8: zoomed about its centre, shifted, brightened."""
    height, width = image.shape
    cx, cy = width / 2, height / 2
    # PIL's affine maps each output point p to the input point (p - centre - shift) / zoom + centre.
    coeffs = (1 / zoom, 0, cx - (cx + shift_x) / zoom, 0, 1 / zoom, cy - (cy + shift_y) / zoom)
    moved = Image.fromarray(image).transform((width, height), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    return np.clip(np.asarray(moved, dtype=np.float32) * brightness, 0, 255).round().astype(np.uint8)


def correlated_views(images, labels, num_classes, bases_per_class=200, views_per_base=10, seed=0):
    """The high-correlation set: images [B*V, H, W] uint8, labels [B*V], bases [B*V].

    images [N, H, W] and labels [N] are the source split; B = num_classes * bases_per_class. The
    views of one base are consecutive; bases[i] is the source index image i was rendered from.
    """
    rng = np.random.RandomState(seed)
    bases = pick_bases(np.asarray(labels), num_classes, bases_per_class, rng)
    shape = (len(bases), views_per_base)
    zoom = rng.uniform(*ZOOM, size=shape)
    shift = rng.uniform(-SHIFT, SHIFT, size=shape + (2,))
    brightness = rng.uniform(*BRIGHTNESS, size=shape)
    out = np.empty((len(bases) * views_per_base,) + images.shape[1:], dtype=np.uint8)
    for b, source in enumerate(bases):
        for v in range(views_per_base):
            out[b * views_per_base + v] = render_view(images[source], zoom[b, v], *shift[b, v], brightness[b, v])
    source = np.repeat(bases, views_per_base)
    return out, np.asarray(labels)[source].astype(np.int64), source
