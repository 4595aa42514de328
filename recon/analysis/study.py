"""Longitudinal study analysis: sessions table -> ROI measurements -> tables, tests, figures, report.

Sessions table (CSV, one row per subject, lesion and time point; ``#`` lines are comments):

=============  ===========================================================================
``subject``    subject identifier
``lesion``     lesion identifier (unique within the subject)
``timepoint``  label such as pre, 48h, 1w, 1m, 3m (ordered by :func:`stats.timepoint_hours`;
               the first is the baseline unless ``baseline=`` says otherwise)
``path``       a ``narecon run`` output folder (its ``tsc_mM.nii.gz`` is measured) or a TSC
               NIfTI file; empty = session missing (row kept for its volume, if any)
``rois``       ROI table for this session (see :func:`recon.analysis.roi.read_roi_table`)
``a_mm, b_mm, m_mm, c``  optional: tumour diameters a, b (mm), slice thickness m (mm) and slice
               count c for V = pi/6 * a * b * m * c
=============  ===========================================================================

Relative paths are relative to the sessions table's folder.

Tissues: each ROI's tissue is its ``tissue`` column or, by default, its name (case and a
trailing number ignored) matched against known aliases: tumour (tumor), contralateral
(contra), oedema (edema, peritumoral), CSF, WM (white matter), GM (grey/gray matter).
Several ROIs of one tissue in a session are averaged (mean of their means). The ratio of a
tissue is its TSC over the reference tissue's TSC (CSF by default) in the same session,
computed from unrounded values.

Units of analysis: lesion tissues (tumour, contralateral, oedema) per lesion; global tissues
(CSF, WM, GM) per subject (averaged over the subject's lesion rows at a time point, so a
subject with several lesions is not counted several times). Paired tests pair these units
and use complete pairs only; n and the number of incomplete units are reported.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.analysis import roi as roimod
from recon.analysis.roi import TISSUE_ALIASES, tissue_of  # noqa: F401  (re-exported)
from recon.analysis.stats import adjust_pvalues, ellipsoid_volume_mm3, order_timepoints, paired_ttest, timepoint_hours
from recon.errors import ConfigError, InputError

log = logging.getLogger("recon.analysis.study")

LESION_TISSUES = ("tumour", "contralateral", "oedema")
TISSUE_ORDER = ("tumour", "contralateral", "oedema", "CSF", "WM", "GM")
COMPARISONS = (("tumour", "contralateral"), ("WM", "GM"), ("tumour", "oedema"))

_COLUMN_ALIASES = {
    "subject": ("subject", "subject_id", "patient", "id"),
    "lesion": ("lesion", "lesion_id"),
    "timepoint": ("timepoint", "time_point", "time", "tp", "session"),
    "path": ("path", "image", "tsc", "run_dir", "dir"),
    "rois": ("rois", "roi", "roi_file", "rois_csv"),
    "a_mm": ("a_mm", "a"),
    "b_mm": ("b_mm", "b"),
    "m_mm": ("m_mm", "m", "slice_thickness_mm"),
    "c": ("c", "slices", "slice_count"),
}
REQUIRED = ("subject", "lesion", "timepoint", "path", "rois")


@dataclass
class Session:
    subject: str
    lesion: str
    timepoint: str
    image: str | None
    rois: str | None
    line: int
    dims: tuple[float, float, float, float] | None = None  # a_mm, b_mm, m_mm, c


@dataclass
class StudyData:
    """Measured study: per-session tissue values and all per-ROI rows."""

    sessions: list[Session]
    timepoints: list[str]
    baseline: str
    ref: str
    tissues: list[str]
    tsc: dict = field(default_factory=dict)  # (subject, lesion, tp) -> {tissue: mM}
    ratio: dict = field(default_factory=dict)  # (subject, lesion, tp) -> {tissue: ratio}
    roi_rows: list[dict] = field(default_factory=list)


def read_sessions(path: str | os.PathLike) -> list[Session]:
    """Parse and validate a sessions table; every referenced file must exist."""
    p = Path(path)
    if not p.exists():
        raise InputError("sessions table not found", p)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            lines = [(n, ln) for n, ln in enumerate(f, start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read sessions table: {e}", p) from e
    if len(lines) < 2:
        raise InputError("sessions table has no rows", p)
    header = next(csv.reader([lines[0][1]]))
    cols = [c.strip().lower() for c in header]
    colmap: dict[str, int] = {}
    for canon, aliases in _COLUMN_ALIASES.items():
        for a in aliases:
            if a in cols:
                colmap[canon] = cols.index(a)
                break
    missing = [c for c in REQUIRED if c not in colmap]
    if missing:
        raise InputError(
            f"sessions table lacks column(s) {', '.join(missing)}; found {', '.join(cols)} "
            f"(needs {', '.join(REQUIRED)}; optional a_mm, b_mm, m_mm, c)",
            p,
        )
    dim_cols = [c for c in ("a_mm", "b_mm", "m_mm", "c") if c in colmap]
    if dim_cols and len(dim_cols) != 4:
        raise InputError(f"volume columns need all of a_mm, b_mm, m_mm, c; found only {', '.join(dim_cols)}", p)
    out: list[Session] = []
    seen: set[tuple[str, str, str]] = set()
    for n, ln in lines[1:]:
        vals = next(csv.reader([ln]))

        def get(c: str, vals: list[str] = vals) -> str:
            return vals[colmap[c]].strip() if colmap[c] < len(vals) else ""

        subj, les, tp = get("subject"), get("lesion"), get("timepoint")
        if not subj or not les or not tp:
            raise InputError(f"line {n}: subject, lesion and timepoint must not be empty", p)
        if (subj, les, tp) in seen:
            raise InputError(f"line {n}: duplicate session {subj}/{les}/{tp}", p)
        seen.add((subj, les, tp))
        img = rois = None
        if get("path"):
            ip = Path(get("path"))
            ip = ip if ip.is_absolute() else p.parent / ip
            if ip.is_dir():
                cand = [ip / "tsc_mM.nii.gz", ip / "tsc_mM.nii"]
                hit = [c for c in cand if c.exists()]
                if not hit:
                    raise InputError(f"line {n}: run folder {ip} has no tsc_mM.nii.gz", p)
                ip = hit[0]
            elif not ip.exists():
                raise InputError(f"line {n}: image {ip} not found", p)
            img = str(ip)
            if not get("rois"):
                raise InputError(f"line {n}: session has an image but no ROI file", p)
            rp = Path(get("rois"))
            rp = rp if rp.is_absolute() else p.parent / rp
            if not rp.exists():
                raise InputError(f"line {n}: ROI file {rp} not found", p)
            rois = str(rp)
        dims = None
        if dim_cols and any(get(c) for c in dim_cols):
            try:
                d = tuple(float(get(c)) for c in ("a_mm", "b_mm", "m_mm", "c"))
            except ValueError:
                raise InputError(f"line {n}: a_mm, b_mm, m_mm, c must all be numbers", p) from None
            if any(not (x >= 0 and math.isfinite(x)) for x in d):
                raise InputError(f"line {n}: tumour dimensions must be non-negative numbers", p)
            dims = d
        out.append(Session(subj, les, tp, img, rois, n, dims))
    return out


def measure_study(
    sessions_path: str | os.PathLike,
    ref: str = "CSF",
    baseline: str | None = None,
    supersample: int = roimod.SUPERSAMPLE,
) -> StudyData:
    """Measure every present session's ROIs; returns the per-session tissue values."""
    sessions = read_sessions(sessions_path)
    tps = order_timepoints([s.timepoint for s in sessions])
    if baseline is None:
        baseline = tps[0]
    elif baseline not in tps:
        raise ConfigError(f"baseline {baseline!r} is not a time point of the study ({', '.join(tps)})")
    for t in tps:
        if timepoint_hours(t) is None:
            log.warning("time point %r is not a recognised label (pre, 48h, 1w, 1m, ...): ordered as it appears", t)
    ref_t = tissue_of(ref)
    data = StudyData(sessions, tps, baseline, ref_t, [])
    images: dict[str, roimod.Image] = {}
    tissues_seen: list[str] = []
    for s in sessions:
        if s.image is None:
            continue
        key = (s.subject, s.lesion, s.timepoint)
        if s.image not in images:
            images[s.image] = roimod.load_image(s.image, name=s.image)
        rois = roimod.read_roi_table(s.rois)
        res = roimod.measure([images[s.image]], rois, ref=None, supersample=supersample, source=s.rois)
        by_t: dict[str, list[float]] = defaultdict(list)
        for r, spec in zip(res, rois):
            t = tissue_of(spec.name, spec.tissue)
            by_t[t].append(r.mean)
            data.roi_rows.append(
                {
                    "subject": s.subject,
                    "lesion": s.lesion,
                    "timepoint": s.timepoint,
                    "roi": r.roi,
                    "tissue": t,
                    "mean_mM": r.mean,
                    "sd_mM": r.sd,
                    "min_mM": r.min,
                    "max_mM": r.max,
                    "volume_mm3": r.volume_mm3,
                    "n_voxels": r.n_voxels,
                    "weight_sum": r.weight_sum,
                    "image": _rel(s.image, sessions_path),
                    "rois": _rel(s.rois, sessions_path),
                }
            )
            if t not in tissues_seen:
                tissues_seen.append(t)
        tsc = {t: float(np.mean(v)) for t, v in by_t.items()}
        data.tsc[key] = tsc
        refv = tsc.get(ref_t)
        data.ratio[key] = {t: (v / refv if refv else float("nan")) for t, v in tsc.items()} if refv is not None else {}
        if refv is None:
            log.warning("%s line %d: no %s ROI, so no ratios for this session", sessions_path, s.line, ref_t)
        for row in data.roi_rows[-len(res) :]:
            row["ratio_ref"] = data.ratio[key].get(row["tissue"], float("nan"))
    if not data.tsc:
        raise InputError("no session has an image: nothing to measure", sessions_path)
    data.tissues = [t for t in TISSUE_ORDER if t in tissues_seen] + [t for t in tissues_seen if t not in TISSUE_ORDER]
    return data


def _rel(path: str, sessions_path) -> str:
    """``path`` relative to the sessions table's folder (as the user wrote it), else absolute."""
    try:
        return os.path.relpath(path, Path(sessions_path).resolve().parent)
    except ValueError:
        return path


# --------------------------------------------------------------------------------------------
# tables


def unit_values(data: StudyData, tissue: str, tp: str, measure: str = "tsc") -> dict:
    """Values of ``tissue`` at ``tp`` keyed by analysis unit: (subject, lesion) or (subject,)."""
    src = data.tsc if measure == "tsc" else data.ratio
    acc: dict[tuple, list[float]] = defaultdict(list)
    for (subj, les, t), vals in src.items():
        if t != tp or tissue not in vals:
            continue
        key = (subj, les) if tissue in LESION_TISSUES or tissue not in TISSUE_ORDER else (subj,)
        acc[key].append(vals[tissue])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _desc(vals) -> dict:
    v = np.asarray(list(vals), float)
    v = v[np.isfinite(v)]
    nan = float("nan")
    if v.size == 0:
        return {"n": 0, "mean": nan, "sd": nan, "min": nan, "max": nan}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else nan,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def summary_table(data: StudyData, tp: str | None = None) -> list[dict]:
    """Per tissue: n, mean, SD, min, max of TSC (mM) and of TSC/ref at time point ``tp`` (baseline)."""
    tp = tp or data.baseline
    rows = []
    for t in data.tissues:
        for measure in ("tsc_mM", "ratio"):
            if measure == "ratio" and t == data.ref:
                continue
            vals = unit_values(data, t, tp, "tsc" if measure == "tsc_mM" else "ratio")
            rows.append(
                {
                    "timepoint": tp,
                    "tissue": t,
                    "measure": measure if measure == "tsc_mM" else f"ratio_{data.ref}",
                    "unit": "mM" if measure == "tsc_mM" else "1",
                    **_desc(vals.values()),
                }
            )
    return rows


def lesion_table(data: StudyData) -> list[dict]:
    """The study's wide table: one row per session; TSC (mM) and ratio per tissue."""
    rows = []
    for s in data.sessions:
        key = (s.subject, s.lesion, s.timepoint)
        if key not in data.tsc:
            continue
        row = {"subject": s.subject, "lesion": s.lesion, "timepoint": s.timepoint}
        for t in data.tissues:
            row[f"{t}_mM"] = data.tsc[key].get(t, float("nan"))
        for t in data.tissues:
            if t != data.ref:
                row[f"{t}_ratio"] = data.ratio[key].get(t, float("nan"))
        rows.append(row)
    order = {tp: i for i, tp in enumerate(data.timepoints)}
    rows.sort(key=lambda r: (order[r["timepoint"]], r["subject"], r["lesion"]))
    return rows


def ttest_table(data: StudyData) -> list[dict]:
    """Paired t-tests: tissue comparisons at each time point, and each time point vs baseline.

    The whole table is one family for the multiple-comparison corrections: ``p_holm`` (Holm,
    family-wise error rate) and ``p_bh`` (Benjamini-Hochberg, false discovery rate) adjust the
    raw ``p`` over every test with a finite p (:func:`recon.analysis.stats.adjust_pvalues`).
    Means and SDs are in ``unit`` (mM for TSC, 1 for ratios).
    """
    rows = []
    for measure in ("tsc", "ratio"):
        mname = "tsc_mM" if measure == "tsc" else f"ratio_{data.ref}"
        unit = "mM" if measure == "tsc" else "1"
        for a, b in COMPARISONS:
            if a not in data.tissues or b not in data.tissues:
                continue
            if measure == "ratio" and data.ref in (a, b):
                continue
            for tp in data.timepoints:
                va, vb = unit_values(data, a, tp, measure), unit_values(data, b, tp, measure)
                if (a in LESION_TISSUES) != (b in LESION_TISSUES):  # pair per subject if the units differ
                    va = _per_subject(va)
                    vb = _per_subject(vb)
                uni = _units(data, a) | _units(data, b)
                if (a in LESION_TISSUES) != (b in LESION_TISSUES):
                    uni = {(k[0],) for k in uni}
                r = paired_ttest(va, vb, universe=uni)
                rows.append(
                    {
                        "test": f"{a} vs {b}",
                        "measure": mname,
                        "unit": unit,
                        "timepoint": tp,
                        "a": a,
                        "b": b,
                        **r.as_dict(),
                    }
                )
        for t in data.tissues:
            if measure == "ratio" and t == data.ref:
                continue
            base = unit_values(data, t, data.baseline, measure)
            for tp in data.timepoints:
                if tp == data.baseline:
                    continue
                r = paired_ttest(unit_values(data, t, tp, measure), base, universe=_units(data, t))
                rows.append(
                    {
                        "test": f"{t}: {tp} vs {data.baseline}",
                        "measure": mname,
                        "unit": unit,
                        "timepoint": tp,
                        "a": f"{t}@{tp}",
                        "b": f"{t}@{data.baseline}",
                        **r.as_dict(),
                    }
                )
    holm, bh = adjust_pvalues([r["p"] for r in rows])
    for r, h, q in zip(rows, holm, bh):
        r["p_holm"], r["p_bh"] = float(h), float(q)
    return rows


def _units(data: StudyData, tissue: str) -> set:
    """All analysis units of ``tissue`` in the study: every lesion (or subject) of the sessions table."""
    if tissue in LESION_TISSUES or tissue not in TISSUE_ORDER:
        return {(s.subject, s.lesion) for s in data.sessions}
    return {(s.subject,) for s in data.sessions}


def _per_subject(vals: dict) -> dict:
    acc: dict[tuple, list[float]] = defaultdict(list)
    for k, v in vals.items():
        acc[(k[0],)].append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def volume_table(data: StudyData) -> list[dict]:
    """Tumour volumes V = pi/6 a b m c (mm^3 and mL) per session and change from baseline."""
    base: dict[tuple, float] = {}
    rows = []
    order = {tp: i for i, tp in enumerate(data.timepoints)}
    for s in sorted(data.sessions, key=lambda s: (s.subject, s.lesion, order[s.timepoint])):
        if s.dims is None:
            continue
        v = ellipsoid_volume_mm3(*s.dims)
        if s.timepoint == data.baseline:
            base[(s.subject, s.lesion)] = v
        rows.append(
            {
                "subject": s.subject,
                "lesion": s.lesion,
                "timepoint": s.timepoint,
                "a_mm": s.dims[0],
                "b_mm": s.dims[1],
                "m_mm": s.dims[2],
                "c": s.dims[3],
                "volume_mm3": v,
                "volume_mL": v / 1000.0,
            }
        )
    for r in rows:
        b = base.get((r["subject"], r["lesion"]))
        r["change_mL"] = (r["volume_mm3"] - b) / 1000.0 if b is not None else float("nan")
        r["change_pct"] = 100.0 * (r["volume_mm3"] - b) / b if b else float("nan")
    return rows


def timecourse_table(data: StudyData, tissue: str = "tumour") -> list[dict]:
    """Per lesion and time point: TSC, ratio, and their change from the lesion's baseline."""
    rows = []
    lesions = sorted({(s.subject, s.lesion) for s in data.sessions})
    for subj, les in lesions:
        b = data.tsc.get((subj, les, data.baseline), {}).get(tissue)
        br = data.ratio.get((subj, les, data.baseline), {}).get(tissue)
        for tp in data.timepoints:
            key = (subj, les, tp)
            v = data.tsc.get(key, {}).get(tissue)
            if v is None:
                continue
            r = data.ratio.get(key, {}).get(tissue, float("nan"))
            nan = float("nan")
            rows.append(
                {
                    "subject": subj,
                    "lesion": les,
                    "timepoint": tp,
                    "hours": timepoint_hours(tp) if timepoint_hours(tp) is not None else nan,
                    "tsc_mM": v,
                    "ratio": r,
                    "change_mM": v - b if b is not None else nan,
                    "change_pct": 100.0 * (v - b) / b if b else nan,
                    "ratio_change": r - br if br is not None else nan,
                }
            )
    return rows


def rebound_table(data: StudyData, tissue: str = "tumour", threshold_mM: float = 0.0) -> list[dict]:
    """Per lesion: does TSC rise again at the study's last time point?

    ``rises_at_last`` is "yes" when the lesion has the last time point and its TSC there
    exceeds its TSC at its previous measured time point by more than ``threshold_mM``, "no"
    when not, "n/a" when the last or any earlier time point is missing for the lesion.
    ``fell_before`` says whether a decrease between consecutive measured time points
    preceded it (a second rise rather than a continuing one).
    """
    last = data.timepoints[-1]
    rows = []
    for subj, les in sorted({(s.subject, s.lesion) for s in data.sessions}):
        series = [(tp, data.tsc[(subj, les, tp)][tissue]) for tp in data.timepoints if tissue in data.tsc.get((subj, les, tp), {})]
        present = [tp for tp, _ in series]
        missing = [tp for tp in data.timepoints if tp not in present]
        row = {
            "subject": subj,
            "lesion": les,
            "n_timepoints": len(series),
            "missing": " ".join(missing),
            "baseline_mM": data.tsc.get((subj, les, data.baseline), {}).get(tissue, float("nan")),
            "last_mM": float("nan"),
            "previous_timepoint": "",
            "rise_mM": float("nan"),
            "rises_at_last": "n/a",
            "fell_before": "n/a",
        }
        if len(series) >= 2 and series[-1][0] == last:
            prev_tp, prev = series[-2]
            rise = series[-1][1] - prev
            falls = any(series[i + 1][1] < series[i][1] for i in range(len(series) - 2))
            row.update(
                last_mM=series[-1][1],
                previous_timepoint=prev_tp,
                rise_mM=rise,
                rises_at_last="yes" if rise > threshold_mM else "no",
                fell_before="yes" if falls else "no",
            )
        rows.append(row)
    return rows


def counts_table(data: StudyData) -> list[dict]:
    """Sessions present per time point (of the lesions in the table)."""
    lesions = sorted({(s.subject, s.lesion) for s in data.sessions})
    rows = []
    for tp in data.timepoints:
        have = [lk for lk in lesions if (*lk, tp) in data.tsc]
        rows.append(
            {
                "timepoint": tp,
                "lesions_expected": len(lesions),
                "sessions_measured": len(have),
                "missing": " ".join(f"{s}/{le}" for s, le in lesions if (s, le) not in have),
            }
        )
    return rows
