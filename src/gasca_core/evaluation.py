"""Running a trained G over data, and the report every tool prints.

batched_apply and predict run a network over many images in batches without recording a
graph; results_tables is the one report of train, evaluate and compare: MSE / PSNR / SSIM
beside the two trivial baselines, and the error per label value (per yaw, ...).

quality_metrics goes further: besides MSE / PSNR / SSIM it asks whether the outputs are as
sharp as the targets (sharpness ratio), free of grid textures (artefact ratio), distributed
like real faces (realism distance) and still the same person (identity rank-1 with a
trained recognizer and with eigenfaces; see gasca_core.recognition), overall and per yaw,
as a JSON-serialisable dict; quality_tables renders that dict as Markdown tables.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .backend import get_array_module, to_device, to_numpy
from .data.pairs import PairDataset
from .metrics import (artefact_ratio, gradient_energy_per_image, mse_per_image,
                      psnr_per_image, sharpness_ratio, ssim_per_image, summarize)
from .recognition import (IDENTITY_ROWS, Eigenfaces, Recognizer,
                          frontal_training_images, get_recognizer, identity_report,
                          realism_distance)
from .tensor import Tensor, no_grad


def batched_apply(fn: Callable[[Tensor], Tensor], x, batch_size: int = 256):
    """fn over the first axis of array x in batches, without recording a graph; the result
    stays on x's device."""
    xp = get_array_module(x)
    outs = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(fn(Tensor(x[i:i + batch_size])).data)
    return xp.concatenate(outs) if outs else x[:0]


def predict(g, inputs: np.ndarray, device: str = "cpu") -> np.ndarray:
    """G's outputs for (N, C, H, W) host inputs, run on `device` in batches, as a host array."""
    g.eval()
    return to_numpy(batched_apply(g, to_device(inputs, device)))


def mean_image(images, chunk: int = 4096) -> np.ndarray:
    """The mean (1, C, H, W) of (N, C, H, W) images, read `chunk` at a time (a prepared
    cache's images are never all in memory at once), summed in float64."""
    total = np.zeros((1, *images.shape[1:]), dtype=np.float64)
    for i in range(0, len(images), chunk):
        total += to_numpy(images[i:i + chunk]).sum(axis=0, keepdims=True, dtype=np.float64)
    return (total / max(1, len(images))).astype(np.float32)


def baselines(train: PairDataset, test: PairDataset) -> dict[str, float]:
    """The two trivial baselines: output = input, and output = the mean training target."""
    mean_face = np.broadcast_to(mean_image(train.targets), test.targets.shape)
    return {"copy_input_mse": float(mse_per_image(test.inputs, test.targets).mean()),
            "mean_target_mse": float(mse_per_image(mean_face, test.targets).mean())}


def per_label_table(pred, target, labels: dict, key: str) -> list[tuple[Any, int, float, float, float]]:
    """Rows (label value, count, MSE, PSNR, SSIM) grouped by labels[key]."""
    if key not in labels:
        return []
    vals = np.asarray(labels[key])
    mse, psnr, ssim = (mse_per_image(pred, target), psnr_per_image(pred, target),
                       ssim_per_image(pred, target))
    rows = []
    for v in np.unique(vals):
        m = vals == v
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # yaw -60.0 reads better as -60
        rows.append((v, int(m.sum()), float(mse[m].mean()),
                     float(psnr[m].mean()), float(ssim[m].mean())))
    return rows


def results_tables(name: str, out: np.ndarray, split: PairDataset, train: PairDataset,
                   label_keys: Sequence[str] = ("yaw",)) -> str:
    """The report every tool prints: MSE/PSNR/SSIM of `out` against the split's targets,
    the two trivial baselines, and the error per label value (per yaw, ...)."""
    m = summarize(out, split.targets)
    base = baselines(train, split)
    lines = [format_table(["", "MSE", "PSNR (dB)", "SSIM"], [[name, m["mse"], m["psnr"], m["ssim"]]]),
             "",
             format_table(["trivial baseline", "MSE"],
                          [["output = input", base["copy_input_mse"]],
                           ["output = mean target face", base["mean_target_mse"]]])]
    for key in label_keys:
        rows = per_label_table(out, split.targets, split.labels, key)
        if rows:
            lines += ["", f"per {key}{' (degrees)' if key == 'yaw' else ''}:",
                      format_table([key, "n", "MSE", "PSNR", "SSIM"], rows)]
    return "\n".join(lines)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (also valid Markdown)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"  # 4 significant digits: 0.00458, 3.5e-06, 25.17
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells])


# ----------------------------------------------------------------------------- quality

def _try(fn: Callable[[], Any], notes: list[str], what: str) -> Any:
    """fn(), or None with a note when the data does not allow it (a ValueError)."""
    try:
        return fn()
    except ValueError as e:
        notes.append(f"{what} skipped: {e}")
        return None


def _image_row(x: np.ndarray, target: np.ndarray, period: int, notes: list[str]) -> dict[str, Any]:
    m = summarize(x, target)
    m["sharpness"] = _try(lambda: sharpness_ratio(x, target), notes, "sharpness")
    m["artefact"] = _try(lambda: artefact_ratio(x, target, period), notes, "artefact ratio")
    return m


_EIGENFACES: list[tuple[Any, Eigenfaces]] = []  # [(weakref to the training set, model)]


def _eigenfaces_of(train: PairDataset) -> Eigenfaces:
    """Eigenfaces fitted on train's frontal images, kept for the last training set seen:
    compare scores every run on two splits with the same training set, and the fit (an
    SVD, ~3 s for 337 people) is the same every time.  Held by a weak reference: the
    cache never keeps a training set alive."""
    if _EIGENFACES and _EIGENFACES[0][0]() is train:
        return _EIGENFACES[0][1]
    model = Eigenfaces.fit(frontal_training_images(train)[0])
    _EIGENFACES[:] = [(weakref.ref(train), model)]
    return model


def quality_metrics(out: Any, split: PairDataset, train: PairDataset,
                    recognizer: Union[Recognizer, None, bool] = None,
                    eigenfaces: Union[Eigenfaces, None, bool] = None, period: int = 8,
                    label_key: str = "yaw", log: Optional[Callable[[str], Any]] = None,
                    references: bool = True) -> dict[str, Any]:
    """Every quality measure of G's outputs `out` (N, C, H, W) for split.inputs, as a
    JSON-serialisable dict (render it with quality_tables):

    - "overall": {"outputs": row, "inputs": row}, row = mse, psnr, ssim, sharpness
      (metrics.sharpness_ratio against the targets), artefact (metrics.artefact_ratio,
      grid period `period`) and realism (recognition.realism_distance to the targets);
      the raw inputs are the reference row (what G starts from).
    - "identity": {"recognizer": report, "eigenfaces": report} from
      recognition.identity_report (rows outputs / inputs / targets / chance, each with
      rank1, n and per_yaw keyed by the yaw as text), None where skipped.
    - "per_yaw": rows {yaw, n, mse, psnr, ssim, sharpness, artefact} grouped by
      split.labels[label_key] (empty without that label).
    - "recognizer": the recognizer's info (train_seconds, cached, ...: its training is
      not part of G's), or None; "notes": one line per thing skipped, and why.

    recognizer: a trained Recognizer; None gets the one for `train` from the cache
    (recognition.get_recognizer: trained on first use, ~10-15 s on 2 cores); False skips
    the recognizer (identity and realism). eigenfaces: an Eigenfaces; None fits one on
    train's frontal images (50 components); False skips it.

    references=False leaves out what does not depend on `out` (the raw inputs' row and the
    identity rows of the inputs, the targets and chance), for a caller that scores many
    runs on one split and computes those once (compare); about half the cost.
    """
    out_h = to_numpy(out)
    inputs, targets = to_numpy(split.inputs), to_numpy(split.targets)
    if out_h.shape != targets.shape:
        raise ValueError(f"out must have the split's image shape {targets.shape}, got "
                         f"{out_h.shape}")
    notes: list[str] = []
    q: dict[str, Any] = {"split": split.name, "n": int(len(split)), "period": int(period),
                         "label_key": label_key,
                         "overall": {"outputs": _image_row(out_h, targets, period, notes)},
                         "identity": {"recognizer": None, "eigenfaces": None},
                         "per_yaw": [], "recognizer": None, "notes": notes}
    if references:
        q["overall"]["inputs"] = _image_row(inputs, targets, period, [])
    embedders: dict[str, Any] = {}
    if recognizer is None:
        def fetch():
            model, info = get_recognizer(train, progress=False, log=log)
            q["recognizer"] = {k: v for k, v in info.items() if k != "path"}
            return model
        recognizer = _try(fetch, notes, "recognizer")
    if recognizer is not None and recognizer is not False:
        embedders["recognizer"] = recognizer
    if eigenfaces is None:
        eigenfaces = _try(lambda: _eigenfaces_of(train), notes, "eigenfaces")
    if eigenfaces is not None and eigenfaces is not False:
        embedders["eigenfaces"] = eigenfaces
    for name, embedder in embedders.items():
        report, note = identity_report(out_h, split, embedder,
                                       rows=IDENTITY_ROWS if references else ("outputs",))
        if report is None:
            notes.append(f"{name}: {note}")
            continue
        for row in report["rows"].values():
            row["per_yaw"] = {str(k): v for k, v in row["per_yaw"].items()}
        q["identity"][name] = {**report, "note": note}
    if "recognizer" in embedders:
        for row, x in (("outputs", out_h), ("inputs", inputs))[:2 if references else 1]:
            q["overall"][row]["realism"] = _try(
                lambda x=x: realism_distance(x, targets, embedders["recognizer"]),
                notes if row == "outputs" else [], "realism distance")
    if label_key in split.labels:
        vals = np.asarray(split.labels[label_key])
        mse, ssim = mse_per_image(out_h, targets), ssim_per_image(out_h, targets)
        psnr = psnr_per_image(out_h, targets)
        e_out, e_tgt = gradient_energy_per_image(out_h), gradient_energy_per_image(targets)
        for v in np.unique(vals):
            m = vals == v
            v = v.item() if hasattr(v, "item") else v
            v = int(v) if isinstance(v, float) and v.is_integer() else v
            tgt_energy = float(e_tgt[m].sum())
            q["per_yaw"].append({
                label_key: v, "n": int(m.sum()), "mse": float(mse[m].mean()),
                "psnr": float(psnr[m].mean()), "ssim": float(ssim[m].mean()),
                "sharpness": float(e_out[m].sum()) / tgt_energy if tgt_energy > 0 else None,
                "artefact": _try(lambda m=m: artefact_ratio(out_h[m], targets[m], period), [],
                                 "artefact ratio")})
    return q


def _fmt_or_dash(v: Any) -> Any:
    return "-" if v is None else v


def quality_tables(q: dict[str, Any]) -> str:
    """quality_metrics' dict as Markdown tables: overall (outputs beside the raw inputs),
    identity rank-1 (recognizer and eigenfaces: outputs / inputs / targets / chance), and
    per yaw (MSE, SSIM, sharpness, artefact, rank-1 of outputs, inputs, targets)."""
    cols = ["mse", "psnr", "ssim", "sharpness", "artefact", "realism"]
    lines = [format_table(["", "MSE", "PSNR (dB)", "SSIM", "sharpness", "artefact",
                           "realism (FD)"],
                          [[name] + [_fmt_or_dash(row.get(c)) for c in cols]
                           for name, row in (("outputs", q["overall"]["outputs"]),
                                             ("raw inputs (reference)",
                                              q["overall"].get("inputs")))
                           if row is not None]),
             "",
             "sharpness: gradient energy / the targets' (1 = as sharp, < 1 blurred); artefact: "
             f"power at the stride frequencies (periods 2..{q.get('period', 8)} px) / the "
             "targets' (1 = no grid texture); realism: Frechet distance of recognizer "
             "embeddings to the targets' (0 = same distribution; FID-style, not comparable "
             "to published FIDs)."]
    ident = q.get("identity", {})
    rows = []
    for row in ("outputs", "inputs", "targets", "chance"):
        label = {"outputs": "outputs", "inputs": "raw inputs", "targets": "true targets (ceiling)",
                 "chance": "chance"}[row]
        if any(ident.get(k) and row in ident[k]["rows"] for k in ("recognizer", "eigenfaces")):
            rows.append([label] + [_fmt_or_dash(ident[k]["rows"][row]["rank1"]
                                                if ident.get(k) and row in ident[k]["rows"]
                                                else None)
                                   for k in ("recognizer", "eigenfaces")])
    if any(ident.get(k) for k in ("recognizer", "eigenfaces")):
        lines += ["", "identity rank-1:", format_table(["probes", "recognizer", "eigenfaces"], rows)]
        note = next(ident[k]["note"] for k in ("recognizer", "eigenfaces") if ident.get(k))
        lines.append(note)
    rec = q.get("recognizer")
    if rec:
        lines.append(f"recognizer: {rec['n_identities']} training people, {rec['n_images']} "
                     f"images, {rec['steps']} steps, trained in {rec['train_seconds']:.1f} s"
                     f"{' (loaded from the cache)' if rec.get('cached') else ''}; not part of "
                     f"G's training time")
    if q.get("per_yaw"):
        key = q.get("label_key", "yaw")
        per = (ident.get("recognizer") or {}).get("rows", {})

        def rank(row: str, v: Any) -> Any:
            r = per.get(row, {}).get("per_yaw", {}).get(str(v))
            return "-" if r is None else r["rank1"]
        rows = [[r[key], r["n"], r["mse"], r["ssim"], _fmt_or_dash(r["sharpness"]),
                 _fmt_or_dash(r["artefact"]), rank("outputs", r[key]), rank("inputs", r[key]),
                 rank("targets", r[key])] for r in q["per_yaw"]]
        lines += ["", f"per {key}{' (degrees)' if key == 'yaw' else ''}:",
                  format_table([key, "n", "MSE", "SSIM", "sharpness", "artefact",
                                "rank-1 outputs", "rank-1 inputs", "rank-1 targets"], rows)]
    for note in q.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def phase_end_table(history: Sequence[dict]) -> str:
    """D's mean probability of 'real' on real targets and on G's outputs at the end of each
    phase (the last validation record of the phase), beside the phase's validation MSE:
    the first place to look for a discriminator that wins (D(fake) -> 0) or does nothing
    (both near 0.5). Phases that train no D show '-'."""
    last: dict[Any, dict] = {}
    for rec in history:
        last[rec.get("phase_index", rec.get("phase"))] = rec
    rows = [[r.get("phase", "?"), r.get("phase_step", "-"), _fmt_or_dash(r.get("val_mse")),
             _fmt_or_dash(r.get("d_real")), _fmt_or_dash(r.get("d_fake"))] for r in last.values()]
    if not rows:
        return ""
    return format_table(["phase", "steps", "val MSE", "D(real)", "D(fake)"], rows)
