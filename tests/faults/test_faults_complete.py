"""A complete run whose files are deleted or damaged afterwards: ``python -m biaskd.verify``
names the file and exits 1, every loader raises ArtifactError naming it, the training command
stops with one line naming it and ``+repair=true``, and ``+repair=true`` moves the damaged run
dir to ``.bad/`` untouched and trains the run anew to the same numbers."""
import json
import re

import pytest

from analysis.runs import load_run
from biaskd.errors import ArtifactError
from biaskd.modules.callbacks import AtomicCheckpointIO
from biaskd.record import artifacts, schema
from biaskd.record.artifacts import RunDir
from biaskd.record.optimized_metric import last_logged
from biaskd.run.train import train
from biaskd.tools.verify import main as verify
from faultkit import assert_same_run, cfg, damage, flip, tree

#: how each file of a run is read back, and the name an error about it must carry
LOADERS = {
    "meta.json": lambda run: RunDir(run).meta,
    "config.yaml": lambda run: load_run(run).config,
    "MANIFEST.json": lambda run: RunDir(run).state_dict(),  # every checked load needs it
    "model.pt": lambda run: RunDir(run).state_dict(),
    "checkpoints/last.ckpt": lambda run: AtomicCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt"),
    "metrics.json": lambda run: RunDir(run).metrics,
    "outputs/test.npz": lambda run: RunDir(run).outputs("test"),
    "logs/metrics.csv": lambda run: last_logged(run, "valid/accuracy"),
}
CASES = [(name, how) for name in LOADERS for how in ("delete", "flip")]


@pytest.mark.parametrize("name,how", CASES, ids=[f"{how}-{name}" for name, how in CASES])
def test_a_damaged_file_is_named_everywhere_and_repaired(trained, tmp_path, capsys, name, how):
    runs = trained.copy(tmp_path / "runs")
    run = runs.independent
    for check in LOADERS.values():  # the copy reads back as it was written
        check(run)
    damaged = damage(run / name, how)
    before = tree(run)

    # verify: one line, naming the run and the file; exit status 1
    capsys.readouterr()
    assert verify([str(runs.root)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [line for line in out.splitlines() if line.startswith("BAD ")]
    (bad_line,) = out.splitlines()
    assert bad_line.startswith(f"BAD {run}: ") and name in bad_line
    assert "1 bad" in err and "2 ok" in err  # the teacher and the student are fine

    # the loader of that file: ArtifactError naming it (for a lost manifest: naming the manifest)
    with pytest.raises(ArtifactError, match=re.escape(name)):
        LOADERS[name](run)

    # the training command: not complete, not retrained, one line naming the file and the way out
    with pytest.raises(ArtifactError) as error:
        train(cfg(runs.root))
    message = str(error.value)
    assert "\n" not in message and name in message and "+repair=true" in message
    assert tree(run) == before and not (run.parent / ".bad").exists()

    # +repair=true: the damaged dir kept aside as it was, the run trained anew to the same numbers
    fixed = train(cfg(runs.root, "independent", "+repair=true"))
    assert fixed.path == run and fixed.verify() == []
    (kept,) = (run.parent / ".bad").iterdir()
    assert tree(kept) == before
    assert (kept / name).exists() == (damaged is not None)
    assert_same_run(fixed, RunDir(trained.independent))
    assert verify([str(runs.root)]) == 0


def test_a_lost_complete_marker_means_the_run_is_finished_again_to_the_same_numbers(trained, tmp_path, capsys):
    runs = trained.copy(tmp_path / "runs")
    run = runs.independent
    (run / schema.COMPLETE).unlink()
    capsys.readouterr()
    assert verify([str(runs.root)]) == 0
    assert "1 incomplete" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="no COMPLETE marker"):
        load_run(run)
    again = train(cfg(runs.root))  # resumed from its last checkpoint: evaluated and written again
    assert again.path == run and again.is_complete and again.verify() == []
    assert_same_run(again, RunDir(trained.independent))
    assert not (run.parent / ".bad").exists()


def test_a_damaged_complete_marker_holds_no_number_and_changes_nothing(trained, tmp_path, capsys):
    runs = trained.copy(tmp_path / "runs")
    run = runs.independent
    flip(run / schema.COMPLETE)
    before = tree(run)
    assert verify([str(runs.root)]) == 0
    assert "3 ok" in capsys.readouterr().err
    assert train(cfg(runs.root)).path == run  # complete: skipped
    assert tree(run) == before
    assert_same_run(RunDir(run), RunDir(trained.independent))


def _write_raw_json(path, obj):
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("marker_version", [None, 2], ids=["format-1-run", "format-1-meta-but-format-2-marker"])
def test_a_run_without_a_manifest_is_format_1_only_if_nothing_says_otherwise(trained, tmp_path, capsys,
                                                                             marker_version):
    runs = trained.copy(tmp_path / "runs")
    run = runs.independent
    (run / artifacts.MANIFEST).unlink()
    meta = json.loads((run / schema.META).read_text())
    _write_raw_json(run / schema.META, {**meta, "format_version": 1})
    marker = {"finished": "then"} | ({"format_version": marker_version} if marker_version else {})
    _write_raw_json(run / schema.COMPLETE, marker)
    capsys.readouterr()
    if marker_version is None:  # a run written before manifests existed: readable, nothing to check against
        assert verify([str(runs.root)]) == 0
        assert "1 no manifest" in capsys.readouterr().err
        assert RunDir(run).state_dict().keys() == RunDir(trained.independent).state_dict().keys()
        assert train(cfg(runs.root)).path == run
    else:  # its COMPLETE marker says it was finished under a format that writes one
        assert verify([str(runs.root)]) == 1
        assert "MANIFEST.json: missing" in capsys.readouterr().out
        with pytest.raises(ArtifactError, match="MANIFEST.json: missing"):
            RunDir(run).state_dict()
        with pytest.raises(ArtifactError, match=r"MANIFEST.json: missing.*\+repair=true"):
            train(cfg(runs.root))


def test_verify_finds_a_run_by_any_of_its_files_and_nothing_else(tmp_path, capsys):
    lost_meta = tmp_path / "runs" / "a-run"
    (lost_meta / "checkpoints").mkdir(parents=True)
    (lost_meta / "config.yaml").write_text("seed: 1\n")  # an interrupted run, before its meta.json
    configs = tmp_path / "runs" / "conf"
    (configs / "task").mkdir(parents=True)
    (configs / "config.yaml").write_text("defaults: []\n")  # a folder of Hydra configs: not a run
    done = tmp_path / "runs" / "done"
    done.mkdir()
    (done / "COMPLETE").write_text("{}")  # complete, but it has lost everything else
    (done / "model.pt").write_bytes(b"weights")
    capsys.readouterr()
    assert verify([str(tmp_path / "runs")]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"BAD {done}: meta.json: missing, and the run has no MANIFEST.json either; "
                                f"{artifacts.REPAIR_HINT}"]
    assert err.startswith("0 ok, 1 bad, 1 incomplete, 0 no manifest")


def test_a_run_set_aside_twice_within_a_second_keeps_both(tmp_path):
    from biaskd.run.trust import set_aside

    run = tmp_path / "runs" / "a-run"
    for content in (b"first", b"second"):
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(content)
        set_aside(RunDir(run), "damaged")
    kept = list((tmp_path / "runs" / ".bad").iterdir())
    assert sorted((k / "model.pt").read_bytes() for k in kept) == [b"first", b"second"] and not run.exists()
