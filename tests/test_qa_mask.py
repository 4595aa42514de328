"""qa.png reads at a glance (anatomical planes with direction marks from the affine, B0 range
covering the field, proper fit legend, optional TSC row) and the object mask follows its rule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from recon.calibrate.mask import background_stats, noise_sigma, object_mask
from recon.calibrate.qa import axis_directions, b0_limits, build_qa_figure, cut2d, fit_label, panels, qa_figure


def _affine(perm=(0, 1, 2), signs=(-1, -1, 1), deg=10.0, vox=4.0):
    th = math.radians(deg)
    rot = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    m = np.zeros((3, 3))
    for a, (r, s) in enumerate(zip(perm, signs)):
        m[r, a] = s * vox
    aff = np.eye(4)
    aff[:3, :3] = rot @ m
    aff[:3, 3] = [50.0, -20.0, 10.0]
    return aff


@pytest.mark.parametrize("perm,signs", [((0, 1, 2), (-1, -1, 1)), ((2, 0, 1), (1, -1, -1)), ((1, 2, 0), (1, 1, 1))])
def test_panels_show_patient_directions_of_the_affine(perm, signs):
    shape = (20, 22, 24)
    aff = _affine(perm, signs)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    ras = ijk @ aff[:3, :3].T + aff[:3, 3]  # independent truth: RAS mm of every voxel
    ps = panels(shape, aff)
    assert [p.plane for p in ps] == ["axial", "coronal", "sagittal"]
    expect = {"axial": ("R", "L", "P", "A"), "coronal": ("R", "L", "I", "S"), "sagittal": ("A", "P", "I", "S")}
    coord = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    for p in ps:
        assert p.labels == expect[p.plane]
        left, right, bottom, top = p.labels
        for letter, img_side in ((right, "right"), (top, "top")):
            c, sgn = coord[letter]
            img = cut2d(ras[..., c], p)
            edge = img[:, -1] - img[:, 0] if img_side == "right" else img[-1, :] - img[0, :]
            assert np.all(sgn * edge > 0), (p.plane, letter)
        # the plane normal is the cut axis: the RAS coordinate along it is ~constant on the slice
        normal = {"axial": 2, "coronal": 1, "sagittal": 0}[p.plane]
        img = cut2d(ras[..., normal], p)
        assert np.ptp(img) < 0.2 * np.ptp(ras[..., normal])
    assert axis_directions(aff) == [(r, s) for r, s in zip(perm, signs)]


def test_b0_range_covers_the_field_inside_the_object():
    rng = np.random.default_rng(1)
    b0 = rng.normal(0, 5, (30, 30, 30))
    b0[10:13, 10:13, 10:13] = 58.0  # small hot spot, far beyond the 99th percentile
    mask = np.zeros(b0.shape, bool)
    mask[5:25, 5:25, 5:25] = True
    b0[0, 0, 0] = 300.0  # outside the object
    assert np.percentile(np.abs(b0), 99) < 20
    lim, ext = b0_limits(b0, mask)
    assert lim == pytest.approx(np.abs(b0[mask]).max()) and lim >= 58.0 and ext == "both"
    lim, ext = b0_limits(b0)
    assert lim == 300.0 and ext == "neither"


def test_fit_label_has_a_proper_sign():
    assert fit_label(SimpleNamespace(slope=0.94889, intercept=-4.6912, r2=0.99904)) == "S = 0.9489 C − 4.69, R² = 0.9990"
    assert fit_label(SimpleNamespace(slope=2.0, intercept=1.5, r2=None)) == "S = 2 C + 1.5"


def _phantom(shape=(32, 32, 32), sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(n) - n / 2 + 0.5 for n in shape], indexing="ij"))
    head = ((g[0] / 11) ** 2 + (g[1] / 9) ** 2 + (g[2] / 10) ** 2) <= 1
    hole = ((g[0] / 3) ** 2 + (g[1] / 3) ** 2 + (g[2] / 3) ** 2) <= 1  # dark core inside the head
    tube = ((g[0] - 13) ** 2 + (g[1] - 13) ** 2 <= 4) & (np.abs(g[2]) < 5)
    obj = np.where(head, 40.0, 0.0)
    obj[hole] = 0.0
    obj[tube] = 60.0
    noisy = np.abs(obj + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))
    return noisy, head | tube, tube


def test_object_mask_rule_on_a_synthetic_head():
    img, truth, tube = _phantom()
    assert noise_sigma(img) == pytest.approx(2.0, rel=0.1)  # Rayleigh background
    aff = np.diag([3.5, 3.5, 3.5, 1.0])
    m = object_mask(img, aff)
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.97
    assert m[16, 16, 16]  # the dark core is filled
    assert m[tube].mean() > 0.9  # the tube (a separate, small component) is kept
    img2 = img.copy()
    img2[2, 2, 2] = 200.0  # a single bright speck is dropped (one voxel < 500 mm^3)
    assert not object_mask(img2, aff)[2, 2, 2]


def test_background_stats_outside_the_mask():
    img, truth, _ = _phantom()
    vals = np.where(truth, 100.0, 3.0)
    vals[0, 0, 0] = -24.0
    st = background_stats(vals, truth, margin_vox=2)
    assert st["min"] == -24.0 and st["max"] == 3.0 and st["mask_voxels"] == int(truth.sum())
    from scipy import ndimage

    assert st["n_voxels"] == int((~ndimage.binary_dilation(truth, iterations=2)).sum())


def test_qa_figure_rows_planes_and_file(tmp_path):
    img, truth, tube = _phantom()
    aff = _affine()
    tb = SimpleNamespace(mask=tube, centre_vox=(29.0, 29.0, 16.0), concentration_mM=60.0, sd=1.0)
    fit = SimpleNamespace(slope=1.0, intercept=-2.0, r2=0.99, concentrations_mM=[60.0], signals=[58.0])
    b0 = np.zeros(img.shape)
    fig = build_qa_figure([img, 0.5 * img], tsc=img, b0_hz=b0, tubes=[tb], fit=fit, affine=aff, title="t")
    assert fig.get_layout_engine() is None  # fixed layout: no tight/constrained layout pass
    texts = [t.get_text() for t in fig.texts]
    assert {"echo 1 |S|", "echo 2 |S|", "B0 (Hz)", "TSC (mM)"} <= set(texts)
    titles = [t for t in texts if t.split()[:1] in (["axial"], ["coronal"], ["sagittal"])]
    assert [t.split()[0] for t in titles[:3]] == ["axial", "coronal", "sagittal"]
    assert len(fig.axes) == 1  # the calibration line; slice panels and colour bars are painted pixels
    assert any("TSC outside the object mask" in t for t in texts)
    assert any(t.get_text() == "S = 1 C − 2, R² = 0.9900" for a in fig.axes if a.get_legend() for t in a.get_legend().texts)
    no_tsc = build_qa_figure([img], b0_hz=b0, affine=aff)  # images-only run: no TSC row
    assert "TSC (mM)" not in [t.get_text() for t in no_tsc.texts]
    png = qa_figure(tmp_path / "qa.png", [img], tsc=img, affine=aff)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _imshow_reference(vol2d, cmap, vmin, vmax, rect_in, fig_in, dpi):
    """The panel as matplotlib's own imshow draws it (independent of the numpy painter): RGBA canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=fig_in, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((rect_in[0] / fig_in[0], rect_in[1] / fig_in[1], rect_in[2] / fig_in[0], rect_in[3] / fig_in[1]))
    ax.imshow(vol2d, origin="lower", interpolation="nearest", aspect="equal", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_axis_off()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def test_qa_panels_are_the_pixels_imshow_draws():
    """Every slice panel of the painted figure equals matplotlib's imshow of the same slice (nearest,
    aspect equal, same axes rectangle) away from the outlines and labels; a wrong flip, offset or colour
    map fails."""
    from recon.calibrate import qa

    rng = np.random.default_rng(3)
    shape = (20, 26, 23)
    vol = rng.uniform(0, 10, shape)
    vol[2:6, 3:9, 4:7] = 20.0  # an asymmetric bright block: flips and transposes show
    fig = build_qa_figure([vol], affine=_affine((0, 1, 2), (1, 1, 1), deg=0.0))
    fig.canvas.draw()
    got = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    fig_in = tuple(fig.get_size_inches())
    vmax = float(np.percentile(vol, 99.9))
    cuts = qa.panels(shape, _affine((0, 1, 2), (1, 1, 1), deg=0.0))
    h_panel, top = 2.2, fig_in[1] - 0.55
    for c, p in enumerate(cuts):
        rect = (0.45 + c * 2.2, top - h_panel + 0.06, 2.2 - 0.12, h_panel - 0.3)
        ref = _imshow_reference(qa.cut2d(vol, p), "gray", 0.0, vmax, rect, fig_in, qa.DPI)
        x0, y1 = int(rect[0] * qa.DPI) + 1, int(fig.canvas.get_width_height()[1] - rect[1] * qa.DPI) - 1
        x1, y0 = int((rect[0] + rect[2]) * qa.DPI) - 1, int(fig.canvas.get_width_height()[1] - (rect[1] + rect[3]) * qa.DPI) + 1
        a, b = got[y0:y1, x0:x1], ref[y0:y1, x0:x1]
        inside = (b != 255).any(-1)  # the image (imshow leaves the rest of the axes white)
        assert inside.sum() > 0.5 * inside.size
        same = (np.abs(a - b).max(-1) <= 2) | ~inside
        assert same.mean() > 0.97, (p.plane, same.mean())  # direction letters and edge pixels may differ


def test_qa_outlines_follow_the_mask():
    """The cyan object outline lies on the mask's boundary voxels: inside the panel, cyan pixels occur
    only where the mask changes within one voxel."""
    from recon.calibrate import qa

    shape = (24, 24, 24)
    vol = np.zeros(shape)
    mask = np.zeros(shape, bool)
    mask[6:18, 8:16, 5:19] = True
    vol[mask] = 5.0
    fig = build_qa_figure([vol + 0.01], mask=mask, affine=np.diag([4.0, 4.0, 4.0, 1.0]))
    fig.canvas.draw()
    px = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    cyan = np.abs(px - [0, 191, 191]).max(-1) <= 3
    assert cyan.sum() > 100
    p = qa.panels(shape, np.diag([4.0, 4.0, 4.0, 1.0]))[0]
    m2 = qa.cut2d(mask, p)
    n_edge = 2 * (m2.any(0).sum() + m2.any(1).sum())  # voxel edges of the rectangle's outline
    assert cyan.sum() >= n_edge  # every panel draws its outline
