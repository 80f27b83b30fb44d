"""One image file, checked from its header: it exists, is a regular non-empty file, PIL can identify
it, its pixels are within dmltune's cap (a decompression bomb or an oversized photo is refused
before anything is decoded), and ``Image.verify()`` finds its data intact (for PNG, the chunk CRCs).
``open_image`` is the one place dmltune opens an image: the dataset scan
(:mod:`dmltune.data.scan`) and the decoder of the training-time cache both use it, so both enforce
the same pixel cap. Each refusal is an :class:`ImageProblem` that names the file and the fix.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from ..registry import ConfigError

DEFAULT_MAX_PIXELS = 89_478_485
"""dmltune's cap on the pixels of one image: PIL's own ``Image.MAX_IMAGE_PIXELS`` (about 89.5 MP,
a 256 MiB RGB image when decoded). CUB, Cars196, SOP and In-Shop images are far below it."""

CAP_FIX = "replace it with a smaller copy, or raise the cap with the dataset parameter max_pixels"


class ImageProblem(ConfigError):
    """One image file that cannot be used: ``path``, what is wrong (``problem``) and the ``fix``."""

    def __init__(self, path, problem: str, fix: str):
        self.path, self.problem, self.fix = str(path), _one_line(problem), fix
        super().__init__(f"{self.path} {self.problem}; {self.fix}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _allow_pil(max_pixels: int) -> None:
    """PIL's process-wide limit at least dmltune's cap, so PIL never refuses (or warns about) an
    image dmltune allows; dmltune itself refuses every image over its cap right after the header."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def open_image(path, max_pixels: int | None = None):
    """The PIL image of ``path`` with only its header read, refused (:class:`ImageProblem`) when PIL
    cannot identify it or it has more than ``max_pixels`` pixels (``None``: the default cap)."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    _allow_pil(max_pixels)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:  # over twice PIL's own limit: PIL refuses before dmltune looks
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL allows"
        raise ImageProblem(path, f"is {size}, over the cap of {max_pixels:,} pixels (a decompression bomb or an "
                                 "oversized image)", CAP_FIX) from None
    except UnidentifiedImageError:
        raise ImageProblem(path, "is not an image PIL can read (corrupt, truncated, or another format)",
                           "delete it or replace it with an intact copy") from None
    except OSError as err:
        if err.errno is None:  # PIL's own complaint about the data (e.g. "Truncated File Read")
            raise ImageProblem(path, f"is damaged ({err})", "delete it or replace it with an intact copy") from None
        raise ImageProblem(path, f"cannot be read ({err.strerror or err})",
                           "check the file and its permissions") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageProblem(path, f"is {w}×{h} = {w * h:,} pixels, over the cap of {max_pixels:,} pixels "
                                 "(a decompression bomb or an oversized image)", CAP_FIX)
    return img


def check_image(path: str, max_pixels: int | None = None, fix: str = "delete it or replace it with an intact copy") -> int:
    """The pixel count of one image file, read from its header; :class:`ImageProblem` when the file
    is missing, empty, not a regular file, a broken symlink or loop, unreadable, or over the cap."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageProblem(path, "is a symlink loop", "delete the link or point it at a real image") from None
        if os.path.islink(path):
            raise ImageProblem(path, f"is a broken symlink (to {os.readlink(path)})",
                               "delete the link or restore its target") from None
        if err.errno == errno.ENOENT:
            raise ImageProblem(path, "not found", "restore the file (re-extract the dataset)") from None
        raise ImageProblem(path, f"cannot be read ({err.strerror or err})",
                           "check the file and its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageProblem(path, "is not a regular file", "remove it or rename it without an image suffix")
    if st.st_size == 0:
        raise ImageProblem(path, "is empty (0 bytes)", fix)
    img = open_image(path, max_pixels)
    try:
        w, h = img.size
        img.verify()  # JPEG: nothing more to read; PNG: chunk CRCs, without decompressing
    except Exception as err:  # PIL raises several types for damaged data (SyntaxError, struct.error, ...)
        raise ImageProblem(path, f"is damaged ({type(err).__name__}: {err})", fix) from None
    finally:
        img.close()
    return w * h


__all__ = ["CAP_FIX", "DEFAULT_MAX_PIXELS", "ImageProblem", "check_image", "open_image"]
