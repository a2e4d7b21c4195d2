"""Rebuild the bundled background photos from scikit-image's sample data.

Run ``python -m data_engine.synthetic.build_assets`` (needs ``scikit-image``; tested with
0.26.0). The images are downscaled to at most 224 px and saved as PNG, which decodes to the
same bytes everywhere (JPEG decoders may differ), keeping generation byte-deterministic.
People and faces (astronaut, camera) are left out on purpose: "person" is a category of the
synthetic world and a photographed person would be an unlabelled one.
"""

from __future__ import annotations

import argparse

# Colour photos and grayscale textures shipped inside the scikit-image wheel (no download).
SKIMAGE_IMAGES = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "grass", "gravel", "brick")
MAX_SIDE = 224


def main(argv=None) -> None:
    from PIL import Image

    from .backgrounds import PHOTO_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    try:
        import skimage.data
    except ImportError as err:
        raise SystemExit("scikit-image is needed to rebuild the assets: pip install scikit-image") from err
    PHOTO_DIR.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_IMAGES:
        im = Image.fromarray(getattr(skimage.data, name)())
        im = im.convert("L") if im.mode in ("L", "1", "I;16") else im.convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        im.save(PHOTO_DIR / f"skimage_{name}.png", optimize=True)
        print(f"wrote {PHOTO_DIR / f'skimage_{name}.png'} {im.size} {im.mode}")


if __name__ == "__main__":
    main()
