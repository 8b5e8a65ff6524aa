"""``python -m vesselfm.infer``: end to end, many files, faults, skipping, scoring, checkpoints."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli import TINY_INFER, dead_pid, run_cli
from omegaconf import DictConfig
from synthetic import FLIPPED_AFFINE, save_nifti, tube_phantom

from vesselfm.infer import infer
from vesselfm.inference import default_output_dir
from vesselfm.utils.cli import UserError
from vesselfm.utils.io import _HOST

# tiny random network, small windows, a 32 x 32 x N prepared grid: seconds on a CPU
FAST = [*TINY_INFER, "model.checkpoint=null"]


def resumable(weights: Path) -> list[str]:
    """``FAST`` with fixed weights: a resume skips only outputs of the same weights, and random
    ones differ from run to run."""
    return [*TINY_INFER, f"model.checkpoint={weights}"]


_run_cli = partial(run_cli, "vesselfm.infer")


@pytest.mark.slow
def test_help(tmp_path: Path) -> None:
    proc = _run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "python -m vesselfm.infer input=PATH" in proc.stdout
    assert "save_prob" in proc.stdout


@pytest.mark.slow
def test_end_to_end_subprocess_keeps_shape_and_affine_and_records_the_run(
    scan_file: Path, tmp_path: Path, weights: Path
) -> None:
    from vesselfm.utils.outputs import RECORD_NAME, file_sha256

    out = tmp_path / "preds"
    proc = _run_cli(
        f"input={scan_file}", f"output={out}", "save_prob=true", *resumable(weights), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    src = nib.load(scan_file)
    pred = nib.load(out / "1_pred.nii.gz")
    prob = nib.load(out / "1_prob.nii.gz")
    for img in (pred, prob):
        assert img.shape == src.shape
        np.testing.assert_array_equal(img.affine, src.affine)
        assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(src.affine)
    assert pred.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    assert "1 segmented, 0 skipped" in proc.stderr
    assert not list(tmp_path.glob("**/.*.tmp*"))  # no temporary files left
    # the hardware-dependent choices are logged with their reasons
    assert re.search(r"inference\.cpu\.precision auto -> (fp32|bf16): this CPU ", proc.stderr)
    assert re.search(r"threads=auto -> \d+ torch threads", proc.stderr)
    # the output record names the tool, the weights and the settings
    record = json.loads((out / RECORD_NAME).read_text())
    (run,) = record["runs"].values()
    assert run["tool"] == "vesselfm.infer"
    assert run["checkpoint"] == {"source": str(weights), "sha256": file_sha256(weights)}
    assert run["settings"]["input"] == str(scan_file)


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_no_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    out = tmp_path / "preds"
    proc = _run_cli(f"input={bad}", f"output={out}", *FAST, cwd=tmp_path)
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(bad) in error_lines[0] and "Traceback" not in proc.stderr
    assert not list(out.iterdir())


def test_default_output_dir(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"")
    assert default_output_dir(str(tmp_path / "scans")) == tmp_path / "scans" / "vesselfm_pred"
    assert (
        default_output_dir(str(tmp_path / "scans" / "a.nii.gz"))
        == tmp_path / "scans" / "vesselfm_pred"
    )
    assert (
        default_output_dir(str(tmp_path / "scans" / "*.nii.gz"))
        == tmp_path / "scans" / "vesselfm_pred"
    )


def test_folder_with_a_bad_file_goes_on_and_fails_at_the_end(
    compose_cfg: Callable[..., DictConfig], make_scan: Callable[..., Path], tmp_path: Path
) -> None:
    make_scan("a.nii.gz")
    make_scan("c.nii.gz", shape=(40, 36, 20), seed=1)
    (tmp_path / "scans" / "b.nii.gz").write_text("broken")
    cfg = compose_cfg("infer", [f"input={tmp_path / 'scans'}", *FAST])
    with pytest.raises(UserError, match=r"1 of 3 scans failed \(first: .*b\.nii\.gz") as info:
        infer(cfg)
    assert "\n" not in str(info.value)
    out = tmp_path / "scans" / "vesselfm_pred"  # the default output folder
    assert sorted(p.name for p in out.iterdir()) == [
        ".vesselfm-outputs.json",
        "a_pred.nii.gz",
        "c_pred.nii.gz",
        "run_summary.json",
        "status-rank0.jsonl",
    ]
    assert nib.load(out / "c_pred.nii.gz").shape == (40, 36, 20)


@pytest.mark.parametrize("what", ["empty_folder", "unwritable_output", "missing_label_dir"])
def test_run_level_errors(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path, what: str
) -> None:
    overrides = {
        "empty_folder": [f"input={tmp_path / 'empty'}"],
        "unwritable_output": [f"input={scan_file}", f"output={tmp_path / 'afile' / 'out'}"],
        "missing_label_dir": [f"input={scan_file}", f"label={tmp_path / 'nolabels'}"],
    }[what]
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    cfg = compose_cfg("infer", [*overrides, *FAST])
    with pytest.raises(UserError) as info:
        infer(cfg)
    assert "\n" not in str(info.value)
    assert (
        "input="
        if what == "empty_folder"
        else "output="
        if what == "unwritable_output"
        else "label="
    ) in str(info.value)


def test_skip_existing_overwrite_and_label_scoring(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "preds"
    labels = scan_file.parent
    cfg = compose_cfg(
        "infer",
        [
            f"input={scan_file}",
            f"output={out}",
            f"label={labels}",
            "save_prob=true",
            *resumable(weights),
        ],
    )
    first = infer(cfg)
    assert [r["skipped"] for r in first["results"]] == [False]
    assert set(first["reports"]) == {"csv", "json", "md"}
    row = first["metrics"][0]
    assert row["case"] == "1" and 0.0 <= row["dice"] <= 1.0 and row["roc_auc"] is not None
    mtime = (out / "1_pred.nii.gz").stat().st_mtime_ns

    second = infer(cfg)
    assert [r["skipped"] for r in second["results"]] == [True]
    assert (out / "1_pred.nii.gz").stat().st_mtime_ns == mtime
    assert second["metrics"][0]["dice"] == pytest.approx(row["dice"])  # scored from the files left

    cfg.overwrite = True
    third = infer(cfg)
    assert [r["skipped"] for r in third["results"]] == [False]


@pytest.mark.parametrize("label", ["good", "not_binary", "shifted"])
def test_infer_label_and_evaluate_score_a_pair_alike(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path, label: str
) -> None:
    """``infer label=`` and ``evaluate`` call one scoring function: the same rows, or the same
    refusal, for the same pair."""
    from vesselfm.metrics.folders import evaluate_folders

    labels = tmp_path / "labels"
    labels.mkdir()
    _, mask = tube_phantom()
    affine = FLIPPED_AFFINE.copy()
    if label == "not_binary":
        mask = mask * 2
    elif label == "shifted":
        affine[1, 3] += 0.5
    save_nifti(labels / "1.label.nii.gz", mask, affine=affine)
    out = tmp_path / "preds"
    cfg = compose_cfg(
        "infer", [f"input={scan_file}", f"output={out}", f"label={labels}", "save_prob=true", *FAST]
    )
    refused = {"not_binary": "expected a binary mask", "shifted": "affine differs"}.get(label)
    if refused is None:
        rows = infer(cfg)["metrics"]
    else:
        with pytest.raises(UserError, match=refused) as info:
            infer(cfg)
        infer_error = str(info.value)
    result = evaluate_folders(pred=out, gt=labels, output=tmp_path / "eval", prob=out)
    if refused is None:
        assert len(rows) == 1 and rows == result.rows
        assert rows[0]["roc_auc"] is not None  # the probabilities were scored by both
    else:
        assert result.rows == [] and refused in result.errors["1"]
        assert result.errors["1"] in infer_error


def test_checkpoint_metadata_sets_preprocess_and_threshold(
    compose_cfg: Callable[..., DictConfig],
    scan_file: Path,
    tmp_path: Path,
    tiny_net: torch.nn.Module,
) -> None:
    ckpt = tmp_path / "best.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in tiny_net.state_dict().items()},
            "vesselfm": {
                "preprocess": {"in_plane_size": 24},
                "threshold": 0.3,
                "model_name": "tiny",
            },
        },
        ckpt,
    )
    base = [
        f"input={scan_file}",
        f"output={tmp_path / 'o'}",
        "model=tiny",
        f"model.checkpoint={ckpt}",
        "inference.roi_size=[32,32,32]",
        "progress=false",
    ]
    result = infer(compose_cfg("infer", base))
    assert result["threshold"] == pytest.approx(0.3)
    assert result["preprocess"].in_plane_size == 24
    explicit = infer(
        compose_cfg(
            "infer", [*base, "threshold=0.7", "preprocess={in_plane_size: 32}", "overwrite=true"]
        )
    )
    assert explicit["threshold"] == pytest.approx(0.7)
    assert explicit["preprocess"].in_plane_size == 32


def test_mesh_and_postprocessing(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    cfg = compose_cfg(
        "infer",
        [
            f"input={scan_file}",
            f"output={out}",
            "save_mesh=true",
            "threshold=0.0",
            "inference.postprocess.keep_largest=1",
            *FAST,
        ],
    )
    infer(cfg)
    mask = np.asarray(nib.load(out / "1_pred.nii.gz").dataobj)
    assert mask.all()  # threshold 0: everything is vessel, one component
    from vesselfm.viz import load_stl

    vertices, faces = load_stl(out / "1_pred.stl")
    assert len(faces) > 0
    # the mesh is in scanner mm, through the flipped affine
    corners = nib.affines.apply_affine(
        FLIPPED_AFFINE, np.array([[0, 0, 0], np.array(mask.shape) - 1])
    )
    lo, hi = corners.min(0), corners.max(0)
    assert (vertices.min(0) >= lo - 1).all() and (vertices.max(0) <= hi + 1).all()


def test_label_lookup_never_returns_the_scan_itself(tmp_path: Path) -> None:
    from vesselfm.io import find_labels, match_label

    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    (tmp_path / "other.nii.gz").write_bytes(b"")
    assert match_label("scan", find_labels(tmp_path, exclude=[scan])) is None
    (tmp_path / "scan.label.nii.gz").write_bytes(b"")
    labels = find_labels(tmp_path, exclude=[scan])
    assert match_label("scan", labels) == tmp_path / "scan.label.nii.gz"


def _patients(root: Path, shapes: dict[str, tuple[int, int, int]], label: bool = False) -> None:
    """``root/<patient>/ct.nii.gz`` (and ``ct.label.nii.gz``): one fixed file name per folder."""
    for seed, (patient, shape) in enumerate(shapes.items()):
        (root / patient).mkdir(parents=True)
        image, mask = tube_phantom(shape, seed)
        save_nifti(root / patient / "ct.nii.gz", image)
        if label:
            save_nifti(root / patient / "ct.label.nii.gz", mask)


def test_same_file_name_in_patient_folders_gets_the_parent_prefixed(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shapes = {"p1": (40, 36, 20), "p2": (44, 40, 24), "p3": (48, 40, 28)}
    _patients(tmp_path / "pat", shapes, label=True)
    cfg = compose_cfg(
        "infer",
        [
            f"input={tmp_path / 'pat' / '*' / 'ct.nii.gz'}",
            f"label={tmp_path / 'pat' / '*' / 'ct.label.nii.gz'}",
            *FAST,
        ],
    )
    with caplog.at_level("INFO", logger="vesselfm"):
        result = infer(cfg)
    out = tmp_path / "pat" / "vesselfm_pred"
    assert [r["case"] for r in result["results"]] == ["p1_ct", "p2_ct", "p3_ct"]
    assert not any(r["skipped"] for r in result["results"])
    for patient, shape in shapes.items():  # each file holds its own patient, on its grid
        assert nib.load(out / f"{patient}_ct_pred.nii.gz").shape == shape
        assert f"renamed: {tmp_path / 'pat' / patient / 'ct.nii.gz'} -> {patient}_ct" in caplog.text
    assert not (out / "ct_pred.nii.gz").exists()
    assert "3 segmented, 0 skipped (outputs exist), 0 failed; scored 3 of 3" in caplog.text
    # the labels pair by the same rule: every patient scored against its own label
    assert [row["case"] for row in result["metrics"]] == ["p1_ct", "p2_ct", "p3_ct"]


@pytest.mark.parametrize("layout", ["default_output_under_glob", "output_is_input"])
def test_outputs_inside_the_input_are_never_read_back(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, layout: str, weights: Path
) -> None:
    root = tmp_path / "data"
    _patients(root, {"p1": (40, 36, 20), "p2": (40, 36, 20)})
    if layout == "default_output_under_glob":
        spec, out = [f"input={root / '*' / '*.nii.gz'}"], root / "vesselfm_pred"
    else:
        spec, out = [f"input={root / 'p1'}", f"output={root / 'p1'}"], root / "p1"
    cfg = compose_cfg("infer", [*spec, *resumable(weights)])
    first = infer(cfg)
    second = infer(cfg)  # a rerun sees the first run's outputs in its input
    assert [r["skipped"] for r in second["results"]] == [True] * len(first["results"])
    assert [r["input"] for r in second["results"]] == [r["input"] for r in first["results"]]
    assert not list(tmp_path.rglob("*_pred_pred*"))
    assert sorted(p.name for p in out.glob("*_pred.nii.gz")) == sorted(
        r["pred"].name for r in first["results"]
    )


def test_stale_temporaries_are_removed_at_start(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds"
    out.mkdir()
    stale = out / f".1_pred.nii.gz.{_HOST}-{dead_pid()}.k3j4h5g6.tmp.nii.gz"  # a SIGKILLed run's
    stale.write_bytes(b"half a file")
    live = out / f".2_pred.nii.gz.{_HOST}-{os.getpid()}.k3j4h5g6.tmp.nii.gz"  # still being written
    live.write_bytes(b"in progress")
    infer(compose_cfg("infer", [f"input={scan_file}", f"output={out}", *FAST]))
    assert not stale.exists()
    assert live.exists()
    assert (out / "1_pred.nii.gz").exists()


def _count_predictions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shapes of the scans predicted (it still runs): each prediction is resampled back to
    its scan's grid once, by the cohort writer."""
    import vesselfm.data.preprocessing as preprocessing

    calls: list[tuple[int, ...]] = []
    real = preprocessing.resample_probabilities

    def counted(prob, shape):  # noqa: ANN001, ANN202
        calls.append(tuple(shape))
        return real(prob, shape)

    monkeypatch.setattr(preprocessing, "resample_probabilities", counted)
    return calls


def test_an_output_name_too_long_fails_before_the_prediction(
    compose_cfg: Callable[..., DictConfig],
    make_scan: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_scan("ok.nii.gz", shape=(40, 36, 20))
    long_scan = make_scan("x" * 246 + ".nii.gz", shape=(44, 40, 24))  # 253 bytes: a legal name
    calls = _count_predictions(monkeypatch)
    cfg = compose_cfg("infer", [f"input={tmp_path / 'scans'}", *FAST])
    with pytest.raises(UserError, match=r"1 of 2 scans failed \(first: .*bytes, more than the 255"):
        infer(cfg)
    assert calls == [(40, 36, 20)]  # the long-named scan was never predicted
    assert long_scan.exists()


def test_an_existing_output_we_did_not_write_is_never_overwritten(
    compose_cfg: Callable[..., DictConfig],
    make_scan: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_scan("a.nii.gz", shape=(40, 36, 20))
    make_scan("b.nii.gz", shape=(44, 40, 24))
    out = tmp_path / "preds"
    out.mkdir()
    theirs = out / "a_pred.nii.gz"
    theirs.write_bytes(b"a segmentation made by hand")
    calls = _count_predictions(monkeypatch)
    cfg = compose_cfg("infer", [f"input={tmp_path / 'scans'}", f"output={out}", *FAST])
    with pytest.raises(
        UserError,
        match=r"1 of 2 scans failed \(first: .*a_pred\.nii\.gz exists and was not written",
    ):
        infer(cfg)
    assert theirs.read_bytes() == b"a segmentation made by hand"
    assert calls == [(44, 40, 24)]  # refused before a was predicted; b went on
    assert nib.load(out / "b_pred.nii.gz").shape == (44, 40, 24)

    cfg.overwrite = True
    result = infer(cfg)  # the user said so
    assert [r["skipped"] for r in result["results"]] == [False, False]
    assert nib.load(theirs).shape == (40, 36, 20)
    from vesselfm.utils.outputs import written_by_us

    assert written_by_us(theirs)


def test_an_output_changed_since_we_wrote_it_is_not_ours(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "preds"
    cfg = compose_cfg(
        "infer", [f"input={scan_file}", f"output={out}", "save_prob=true", *resumable(weights)]
    )
    infer(cfg)
    assert infer(cfg)["results"][0]["skipped"]  # all ours: resumed
    prob = out / "1_prob.nii.gz"
    edited = nib.load(prob)
    nib.save(nib.Nifti1Image(np.asarray(edited.dataobj) * 0.5, edited.affine), str(prob))
    before = prob.read_bytes()
    pred_mtime = (out / "1_pred.nii.gz").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"1_prob\.nii\.gz exists and was not written by vesselfm"):
        infer(cfg)
    assert prob.read_bytes() == before
    assert (out / "1_pred.nii.gz").stat().st_mtime_ns == pred_mtime


def test_foreign_reports_stop_the_run_before_its_first_write(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds"
    out.mkdir()
    (out / "summary.md").write_text("# my own notes\n")
    cfg = compose_cfg(
        "infer", [f"input={scan_file}", f"output={out}", f"label={scan_file.parent}", *FAST]
    )
    with pytest.raises(UserError, match=r"^.*summary\.md exists and was not written by vesselfm"):
        infer(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]
    assert (out / "summary.md").read_text() == "# my own notes\n"


def test_a_case_without_a_label_ends_non_zero_and_is_listed(
    compose_cfg: Callable[..., DictConfig],
    scan_file: Path,
    make_scan: Callable[..., Path],
    tmp_path: Path,
) -> None:
    make_scan("2.img.nii.gz", shape=(40, 36, 20))  # no 2.label.nii.gz
    out = tmp_path / "preds"
    cfg = compose_cfg(
        "infer",
        [f"input={tmp_path / 'scans'}", f"output={out}", f"label={tmp_path / 'scans'}", *FAST],
    )
    with pytest.raises(UserError, match=r"^label=.*1 of 2 case\(s\) have no label.*\(2\)"):
        infer(cfg)
    assert (out / "2_pred.nii.gz").exists()  # segmented all the same
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["scored"], summary["expected"], summary["missing_labels"]) == (1, 2, ["2"])
    assert "Scored 1 of 2 case(s)" in (out / "summary.md").read_text(encoding="utf-8")


def test_clashing_ids_the_folders_cannot_tell_apart_stop_the_run_before_any_write(
    compose_cfg: Callable[..., DictConfig], make_scan: Callable[..., Path], tmp_path: Path
) -> None:
    make_scan("1.img.nii.gz")
    make_scan("1.nii.gz")
    out = tmp_path / "preds"
    cfg = compose_cfg("infer", [f"input={tmp_path / 'scans'}", f"output={out}", *FAST])
    with pytest.raises(
        UserError,
        match=r"^input: files map to the same case id .*\('1': .*1\.img\.nii\.gz, .*/1\.nii",
    ):
        infer(cfg)
    assert not out.exists()


def test_a_resumed_run_never_passes_off_another_patients_output(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    weights: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # one run per patient into one folder: both scans are case "ct" (in this process: three
    # CLI start-ups were most of this test's time; the exit code of a UserError is tested above)
    scans = {}
    for patient, seed in (("a", 0), ("b", 1)):
        (tmp_path / "pat" / patient).mkdir(parents=True)
        scans[patient] = save_nifti(
            tmp_path / "pat" / patient / "ct.nii.gz", tube_phantom(seed=seed)[0]
        )
    out = tmp_path / "out"

    def run(patient: str) -> dict:
        args = [f"input={scans[patient]}", f"output={out}", *resumable(weights)]
        return infer(compose_cfg("infer", args))

    run("a")
    mask_a = (out / "ct_pred.nii.gz").read_bytes()
    with pytest.raises(UserError) as err:
        run("b")
    assert f"was made from {scans['a'].resolve()}, not from {scans['b'].resolve()}" in str(
        err.value
    )
    assert (out / "ct_pred.nii.gz").read_bytes() == mask_a  # untouched
    # the same patient again is a resume: skipped
    caplog.clear()
    with caplog.at_level("INFO", logger="vesselfm"):
        run("a")
    assert "0 segmented, 1 skipped" in caplog.text
