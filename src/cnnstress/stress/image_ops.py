"""Batched image operations the corruption generator is built from, written in torch.

They reproduce, on a whole batch on the device, the scipy / scikit-image / OpenCV / Pillow calls
of the reference CIFAR-10-C generator (hendrycks/robustness ``make_cifar_c.py``), which work on
one NumPy image at a time. torchvision and kornia offer blurs and colour conversions, but with
other border rules, kernel radii and hue conventions, and those differences change the
published corruption levels; hence these few exact ports.

Every function takes float images ``(N, C, H, W)`` unless said otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Border rules, named after scipy.ndimage modes:
#   nearest   a a a | a b c d | d d d   (scipy "nearest", OpenCV BORDER_REPLICATE)
#   mirror    d c b | a b c d | c b a   (scipy "mirror", OpenCV BORDER_REFLECT_101)
#   reflect   c b a | a b c d | d c b   (scipy "reflect", half-sample symmetric)
PAD_MODES = ("nearest", "mirror", "reflect")


def pad_index(size: int, radius: int, mode: str, device: torch.device | str) -> torch.Tensor:
    """Source indices ``(size + 2 * radius,)`` of a 1-D signal padded by ``radius`` each side."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {PAD_MODES}, got {mode!r}")
    if radius > size - 1:
        raise ValueError(f"padding {radius} too large for a signal of {size}")
    index = torch.arange(-radius, size + radius, device=device)
    if mode == "nearest":
        return index.clamp(0, size - 1)
    if mode == "mirror":
        index = index.abs()
        return torch.where(index > size - 1, 2 * (size - 1) - index, index)
    index = torch.where(index < 0, -index - 1, index)
    return torch.where(index > size - 1, 2 * size - 1 - index, index)


def pad2d(images: torch.Tensor, radius_h: int, radius_w: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``images`` by the given radii with a :data:`PAD_MODES` rule."""
    h, w = images.shape[-2:]
    rows = pad_index(h, radius_h, mode, images.device)
    cols = pad_index(w, radius_w, mode, images.device)
    return images[..., rows, :][..., cols]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian: radius ``int(truncate * sigma + 0.5)``, weights sum to 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x**2)
    return phi / phi.sum()


def filter_matrix(
    size: int, kernel: torch.Tensor, mode: str, device: torch.device | str
) -> torch.Tensor:
    """``(size, size)`` matrix of a 1-D correlation with the odd ``kernel``, border included:
    ``matrix @ signal`` equals correlating the ``mode``-padded signal (see :data:`PAD_MODES`)."""
    radius = (kernel.numel() - 1) // 2
    source = pad_index(size, radius, mode, device)
    rows = torch.arange(size, device=device).repeat_interleave(kernel.numel())
    taps = torch.arange(kernel.numel(), device=device).repeat(size)
    matrix = torch.zeros(size, size, dtype=kernel.dtype, device=device)
    return matrix.index_put_((rows, source[rows + taps]), kernel[taps], accumulate=True)


def separable_filter(
    images: torch.Tensor, kernel: np.ndarray | torch.Tensor, mode: str
) -> torch.Tensor:
    """Correlate every channel of ``images`` with the odd 1-D ``kernel`` along H and W.

    Done as two small matrix products (border rule folded into the matrices): a 1-channel
    ``conv2d`` is several times slower on the CPU.
    """
    kernel = torch.as_tensor(kernel, dtype=images.dtype, device=images.device)
    h, w = images.shape[-2:]
    down = filter_matrix(h, kernel, mode, images.device)
    across = filter_matrix(w, kernel, mode, images.device)
    return down @ images @ across.T


def filter2d(images: torch.Tensor, kernel: np.ndarray | torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with the odd square 2-D ``kernel`` (``cv2.filter2D``).

    The kernel is split by SVD into a few separable terms, each two small matrix products
    (exact to float rounding; far faster on the CPU than a 1-channel ``conv2d``).
    """
    kernel = torch.as_tensor(kernel, dtype=torch.float64)
    u, sv, vh = torch.linalg.svd(kernel)
    out = torch.zeros_like(images)
    for r in range(int((sv > sv[0] * 1e-12).sum())):
        column = (u[:, r] * sv[r]).to(images.dtype).to(images.device)
        row = vh[r].to(images.dtype).to(images.device)
        h, w = images.shape[-2:]
        out += (
            filter_matrix(h, column, mode, images.device)
            @ images
            @ filter_matrix(w, row, mode, images.device).T
        )
    return out


def gaussian_blur(
    images: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0
) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` over H and W (``skimage.filters.gaussian``)."""
    if sigma <= 1e-15:  # scipy skips such an axis
        return images
    return separable_filter(images, gaussian_kernel1d(sigma, truncate), mode)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``skimage.color.rgb2hsv`` on ``(N, 3, H, W)`` in [0, 1]: grey pixels get H = S = 0.

    Where several channels hold the maximum, blue wins over green over red, as in skimage.
    """
    r, g, b = images.unbind(1)
    value = images.amax(1)
    delta = value - images.amin(1)
    grey = delta == 0
    safe = torch.where(grey, torch.ones_like(delta), delta)
    hue = torch.zeros_like(value)
    hue = torch.where(r == value, (g - b) / safe, hue)
    hue = torch.where(g == value, 2.0 + (b - r) / safe, hue)
    hue = torch.where(b == value, 4.0 + (r - g) / safe, hue)
    hue = torch.remainder(hue / 6.0, 1.0)
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    sat = torch.where(grey, torch.zeros_like(delta), delta / torch.where(grey, 1.0, value))
    return torch.stack((hue, sat, value), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """``skimage.color.hsv2rgb`` on ``(N, 3, H, W)``.

    Written as ``c = v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6`` and
    ``n = 5, 3, 1`` for R, G, B: the same piecewise-linear map as skimage's six sectors, in a
    few whole-tensor ops.
    """
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6 * h, 6)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` weights of Pillow's ``Image.resize(..., Image.BOX)`` on one axis.

    A port of Pillow's ``precompute_coeffs`` (``Resample.c``) for the box filter: each output
    pixel averages the input pixels whose centres fall in its box (0/1 weights, normalised).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        for x in range(xmin, xmax):
            u = (x - center + 0.5) / filterscale
            matrix[xx, x] = 1.0 if -0.5 < u <= 0.5 else 0.0
        total = matrix[xx].sum()
        if total:
            matrix[xx] /= total
    return matrix


def pil_box_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Pillow's BOX resize of 8-bit images to ``size x size``: horizontal pass, then vertical,
    each rounded to the 8-bit grid as Pillow stores its intermediate image.

    ``images``: float ``(N, C, H, W)`` on the 1/255 grid in [0, 1].
    """
    h, w = images.shape[-2:]
    across = torch.as_tensor(pil_box_matrix(w, size), dtype=images.dtype, device=images.device)
    down = torch.as_tensor(pil_box_matrix(h, size), dtype=images.dtype, device=images.device)
    out = torch.floor(torch.einsum("nchw,vw->nchv", images, across) * 255 + 0.5) / 255
    return torch.floor(torch.einsum("nchv,uh->ncuv", out, down) * 255 + 0.5) / 255


def plasma_fractal(
    n: int, generator: torch.Generator, mapsize: int = 32, wibbledecay: float = 3.0
) -> torch.Tensor:
    """``n`` diamond-square height maps ``(n, mapsize, mapsize)`` in [0, 1].

    The reference's ``plasma_fractal`` (after FLHerne/mapgen), batched: the same rolls and
    slices with a leading batch dimension; the random draws come from ``generator``.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    device = generator.device
    maps = torch.zeros(n, mapsize, mapsize, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=generator, device=device) * 2 - 1
        return total / 4 + wibble * (wibble * noise)

    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres = maps[:, half::step, half::step]
        corners = maps[:, ::step, ::step]
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        maps[:, ::step, half::step] = wibbled_mean(left)
        maps[:, half::step, ::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True)


def affine_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 3)`` affine maps taking the 3 points ``src`` ``(N, 3, 2)`` to ``dst``
    (``cv2.getAffineTransform``, points as ``(x, y)``)."""
    ones = torch.ones(*src.shape[:-1], 1, dtype=src.dtype, device=src.device)
    system = torch.cat((src, ones), -1)  # (N, 3, 3): rows [x, y, 1]
    return torch.linalg.solve(system, dst).transpose(1, 2)


def sample_pixels(
    images: torch.Tensor, x: torch.Tensor, y: torch.Tensor, border: str
) -> torch.Tensor:
    """Bilinear samples of ``images`` at pixel coordinates ``x``, ``y`` ``(N, H, W)``.

    ``border="mirror"``: OpenCV ``BORDER_REFLECT_101`` (``cv2.warpAffine``); ``"reflect"``:
    scipy's half-sample symmetric ``mode="reflect"`` (``map_coordinates(order=1)``).
    """
    h, w = images.shape[-2:]
    if border == "mirror":  # reflect about the outer pixel centres
        grid = torch.stack((x / (w - 1), y / (h - 1)), -1) * 2 - 1
        align = True
    elif border == "reflect":  # reflect about the outer pixel edges
        grid = torch.stack(((2 * x + 1) / w, (2 * y + 1) / h), -1) - 1
        align = False
    else:
        raise ValueError(f"border must be 'mirror' or 'reflect', got {border!r}")
    return F.grid_sample(
        images,
        grid.to(images.dtype),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=align,
    )


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk for ``defocus_blur``, trimmed to its non-zero support.

    ``disk()``: a 17x17 (radius <= 8) aliased disk, normalised, then ``cv2.GaussianBlur`` with
    a 3x3 (radius > 8: 5x5) kernel of ``sigma = alias_blur``; the zero border is dropped, which
    leaves ``cv2.filter2D`` results unchanged.
    """
    span = 8 if radius <= 8 else math.ceil(radius)
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-span, span + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(ksize) - (ksize - 1) / 2
    gauss = np.exp(-(taps**2) / (2 * alias_blur**2))
    gauss /= gauss.sum()
    padded = np.pad(disk, ksize // 2)
    blurred = np.zeros_like(disk)
    for i, wi in enumerate(gauss):
        for j, wj in enumerate(gauss):
            blurred += wi * wj * padded[i : i + disk.shape[0], j : j + disk.shape[1]]
    nonzero = np.argwhere(blurred > 0)
    extent = int(np.abs(nonzero - span).max())
    return blurred[span - extent : span + extent + 1, span - extent : span + extent + 1]


def zoom_matrix(size: int, factor: float, device: torch.device | str) -> torch.Tensor:
    """``(size, size)`` matrix of the reference's ``clipped_zoom`` along one axis.

    Crop the centre ``ceil(size / factor)`` pixels, resize to ``round(crop * factor)`` by
    linear interpolation with corner pixel centres aligned (``scipy.ndimage.zoom(order=1)``),
    keep the centre ``size`` pixels: ``M @ image @ M.T`` is the 2-D operation.
    """
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    out = round(crop * factor)  # scipy.ndimage.zoom's output size
    trim = (out - size) // 2
    position = np.arange(trim, trim + size) * (crop - 1) / (out - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, crop - 1)
    frac = position - low
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.arange(size), top + low), 1 - frac)
    np.add.at(matrix, (np.arange(size), top + high), frac)
    return torch.as_tensor(matrix, dtype=torch.float32, device=device)
