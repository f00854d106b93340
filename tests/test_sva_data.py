"""SVA data: numpred and TSV readers, download, vocabulary, and the SVAData module."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from biaskd.data.base import PAD_ID
from biaskd.data.sva import (
    TSV_REQUIRED,
    SVAData,
    Vocab,
    download_linzen_tsv,
    read_linzen_tsv,
    read_numpred,
    unk_rate,
)
from biaskd.errors import ChecksumError, ConfigError, DataFormatError

LINZEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "linzen"
needs_linzen = pytest.mark.skipif(not (LINZEN / "numpred.val").exists(), reason="shared Linzen data absent")

# the header of Linzen's release (rnnagr/utils.py: dependency_fields)
TSV_HEADER = ["sentence", "orig_sentence", "pos_sentence", "subj", "verb", "subj_pos", "has_rel",
              "has_nsubj", "verb_pos", "subj_index", "verb_index", "n_intervening", "last_intervening",
              "n_diff_intervening", "distance", "max_depth", "all_nouns", "nouns_up_to_verb"]


# -- numpred ------------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_numpred_fixture(tmp_path):
    p = write(tmp_path / "np.txt", "VBZ\tthe key to the cabinets\nVBP\tthe  keys\r\n\n")
    ex = read_numpred(p)
    assert [e.tokens for e in ex] == [["the", "key", "to", "the", "cabinets"], ["the", "keys"]]
    assert [e.label for e in ex] == [0, 1]
    assert ex[0].attractors == ex[0].distance == ex[0].homogeneous == ex[0].n_intervening == -1
    k = read_numpred(p, attractors=2)
    assert k[0].attractors == 2 and k[0].homogeneous == 1 and k[0].n_intervening == 2
    mixed = read_numpred(p, attractors=2, homogeneous=False)
    assert mixed[0].homogeneous == 0 and mixed[0].n_intervening == -1


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("VBZ\tthe key\nVBZ the key\n", 2, "no tab"),
        ("VBZ\tthe key\nVBD\tthe key\n", 2, "unknown label"),
        ("VBZ\t   \nVBP\tthe keys\n", 1, "empty prefix"),
        ("VBZ\tthe key\n\nVBP\tthe keys\n", 2, "no tab"),  # blank line inside the file
        ("VBZ\ta\nVBP\tb\nNN\tc\nxx\n", 3, "unknown label"),
    ],
)
def test_numpred_malformed(tmp_path, text, line, reason):
    p = write(tmp_path / "bad.numpred", text)
    with pytest.raises(DataFormatError) as e:
        read_numpred(p)
    msg = str(e.value)
    assert "bad.numpred" in msg and f"line {line}:" in msg and reason in msg


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"])
def test_numpred_empty(tmp_path, text):
    with pytest.raises(DataFormatError, match="empty file"):
        read_numpred(write(tmp_path / "e.txt", text))


def test_numpred_gzip(tmp_path):
    p = tmp_path / "np.gz"
    p.write_bytes(gzip.compress(b"VBP\tthe dogs\n"))
    assert read_numpred(p)[0].tokens == ["the", "dogs"]


@needs_linzen
def test_numpred_real_files():
    ex = read_numpred(LINZEN / "numpred.test.1", attractors=1)
    assert len(ex) == 52599
    four = read_numpred(LINZEN / "numpred.test.4", attractors=4)
    assert len(four) == 561 and sum(e.label for e in four) == 523  # 523 VBP, 38 VBZ
    assert all(e.attractors == 4 and e.homogeneous == 1 for e in four)


# -- TSV ----------------------------------------------------------------------------------------
def tsv_row(sentence: str, subj: int, verb: int, n_int: int, n_diff: int, verb_pos: str) -> dict:
    toks = sentence.split()
    return {
        "sentence": sentence, "orig_sentence": sentence, "pos_sentence": " ".join("X" for _ in toks),
        "subj": toks[subj - 1], "verb": toks[verb - 1], "subj_pos": "NN" if verb_pos == "VBZ" else "NNS",
        "has_rel": "False", "has_nsubj": "False", "verb_pos": verb_pos, "subj_index": subj,
        "verb_index": verb, "n_intervening": n_int, "last_intervening": "na",
        "n_diff_intervening": n_diff, "distance": verb - subj, "max_depth": 0, "all_nouns": "",
        "nouns_up_to_verb": "",
    }


def write_tsv(path: Path, rows: list[dict], header=TSV_HEADER) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([r.get(c, "") for c in header])
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


FIXTURE_ROWS = [
    # 1-based indices as in the release: "keys"=2, "are"=6
    tsv_row("the keys to the cabinet are on the table", 2, 6, 1, 1, "VBP"),
    tsv_row("in 2001 the author of the books that the critics like writes again", 4, 12, 3, 2, "VBZ"),
    tsv_row('he said " the dog runs "', 5, 6, 0, 0, "VBZ"),
]


def test_tsv_reader(tmp_path):
    ex = read_linzen_tsv(write_tsv(tmp_path / "agr.tsv.gz", FIXTURE_ROWS))
    assert ex[0].tokens == ["the", "keys", "to", "the", "cabinet"]
    assert ex[0].label == 1 and ex[0].attractors == 1 and ex[0].homogeneous == 1 and ex[0].distance == 4
    assert ex[0].correct_verb == "are" and ex[0].sentence[5] == "are"
    assert ex[1].tokens[-1] == "like" and len(ex[1].tokens) == 11
    assert ex[1].label == 0 and ex[1].attractors == 2 and ex[1].n_intervening == 3 and ex[1].homogeneous == 0
    assert ex[2].tokens == ["he", "said", '"', "the", "dog"]  # quote characters survive csv quoting
    assert ex[2].homogeneous == 1 and ex[2].attractors == 0


def test_tsv_missing_columns(tmp_path):
    header = [c for c in TSV_HEADER if c not in ("verb_index", "distance")]
    p = write_tsv(tmp_path / "agr.tsv", FIXTURE_ROWS, header=header)
    with pytest.raises(DataFormatError, match=r"agr\.tsv.*missing required columns \['verb_index', 'distance'\]"):
        read_linzen_tsv(p)
    assert set(TSV_REQUIRED) <= set(TSV_HEADER)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(verb_pos="VBD"), "verb_pos 'VBD'"),
        (dict(verb_index="x"), "non-integer"),
        (dict(verb_index=1), "verb_index 1 outside"),
        (dict(verb_index=40), "verb_index 40 outside"),
    ],
)
def test_tsv_malformed_rows(tmp_path, bad, match):
    rows = [FIXTURE_ROWS[0], {**FIXTURE_ROWS[1], **bad}]
    with pytest.raises(DataFormatError, match=rf"agr\.tsv: line 3: {match}"):
        read_linzen_tsv(write_tsv(tmp_path / "agr.tsv", rows))


def test_tsv_ragged_and_empty(tmp_path):
    p = tmp_path / "agr.tsv"
    p.write_text("\t".join(TSV_HEADER) + "\n" + "a\tb\n")
    with pytest.raises(DataFormatError, match="line 2: 2 fields"):
        read_linzen_tsv(p)
    with pytest.raises(DataFormatError, match="empty"):
        read_linzen_tsv(write(tmp_path / "e.tsv", ""))
    with pytest.raises(DataFormatError, match="no data rows"):
        read_linzen_tsv(write_tsv(tmp_path / "h.tsv", []))
    (tmp_path / "x.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match=r"x\.tsv\.gz: cannot read"):
        read_linzen_tsv(tmp_path / "x.tsv.gz")


# -- download -----------------------------------------------------------------------------------
class FakeOpener:
    def __init__(self, payload: bytes, fail_after: int | None = None):
        self.payload, self.fail_after, self.calls = payload, fail_after, 0

    def __call__(self, url):
        self.calls += 1
        opener = self

        class Response(io.BytesIO):
            def read(self, n=-1):
                if opener.fail_after is not None and self.tell() >= opener.fail_after:
                    raise ConnectionError("connection reset")
                return super().read(min(n, 4) if n > 0 else n)

        return Response(self.payload)


def test_download_atomic_and_checksum(tmp_path):
    payload = b"sentence\tverb_pos\n" * 10
    good = hashlib.md5(payload).hexdigest()
    opener = FakeOpener(payload)
    path = download_linzen_tsv(tmp_path / "d", md5=good, opener=opener)
    assert path.read_bytes() == payload and opener.calls == 1
    assert download_linzen_tsv(tmp_path / "d", md5=good, opener=opener) == path and opener.calls == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [path.name]

    with pytest.raises(ChecksumError):
        download_linzen_tsv(tmp_path / "bad", md5="0" * 32, opener=FakeOpener(payload))
    assert list((tmp_path / "bad").iterdir()) == []  # no final file, temp removed

    with pytest.raises(ConnectionError):
        download_linzen_tsv(tmp_path / "cut", opener=FakeOpener(payload, fail_after=20))
    assert list((tmp_path / "cut").iterdir()) == []

    # an existing file with the wrong checksum is replaced
    (tmp_path / "d" / path.name).write_bytes(b"stale")
    opener2 = FakeOpener(payload)
    assert download_linzen_tsv(tmp_path / "d", md5=good, opener=opener2).read_bytes() == payload
    assert opener2.calls == 1


# -- vocabulary ---------------------------------------------------------------------------------
def test_vocab_min_count_and_unk():
    v = Vocab.build([["a", "b", "a"], ["a", "c", "b"]], min_count=2)
    assert v.itos == ["<pad>", "<unk>", "<VBZ>", "<VBP>", "a", "b"]
    assert v["<pad>"] == PAD_ID == 0 and v["c"] == v.unk_id == 1 and v["never"] == 1
    assert v.number_id(0) == 2 and v.number_id(1) == 3
    x, lengths = v.encode([["a", "c"], ["b"], ["z", "a", "b"]])
    assert x.tolist() == [[4, 1, 0], [5, 0, 0], [1, 4, 5]] and lengths.tolist() == [2, 1, 3]
    assert x.dtype == torch.long
    assert unk_rate(x, v.unk_id) == pytest.approx(2 / 6)
    x, lengths = v.encode([["a", "b", "c", "a"], ["b"]], max_len=3)
    assert x.tolist() == [[5, 1, 4], [5, 0, 0]] and lengths.tolist() == [3, 1]  # keeps the tail
    assert Vocab.from_dict(v.to_dict()).itos == v.itos
    assert v.decode([4, 5, 0, 0]) == ["a", "b"]
    assert Vocab.build([["a"]], min_count=1).itos[-1] == "a"


# -- SVAData ------------------------------------------------------------------------------------
SMALL = dict(n_train=600, n_valid=100, n_test=150, n_deep=150, n_attractors=80, train_max_depth=3, deep_max_depth=5)


def test_grammar_data_classification():
    dm = SVAData(grammar=SMALL, batch_size=32)
    dm.setup()
    assert dm.task == "sva" and dm.input_kind == "tokens" and dm.num_classes == 2
    assert dm.vocab_size == len(dm.vocab) > 50
    assert set(dm.evals) == {"test", "test_deep", "attractors_1", "attractors_2", "attractors_3", "attractors_4"}
    assert len(dm.train) == 600 and len(dm.valid) == 100
    assert dm.train.meta["depth"].max() <= 3 and dm.evals["test_deep"].meta["depth"].min() > 3
    a3 = dm.evals["attractors_3"].meta
    assert (a3["attractors"] == 3).all() and (a3["homogeneous"] == 1).all()
    for name, ex in dm.examples.items():  # x is the prefix, y the subject's number
        split = dm.train if name == "train" else dm.valid if name == "valid" else dm.evals[name]
        for i in (0, len(ex) - 1):
            assert dm.vocab.decode(split.x[i].tolist()) == ex[i].tokens
            assert split.y[i] == ex[i].label and split.meta["distance"][i] == ex[i].distance
    train_text = {" ".join(e.sentence) for e in dm.examples["train"]}
    for name in dm.evals:
        assert not train_text & {" ".join(e.sentence) for e in dm.examples[name]}
    assert len(dm.probe) == min(1000, len(dm.evals["test"]))
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[0] == 32 and batch["x"].dtype == torch.long


def test_grammar_data_is_deterministic_and_split_seeded():
    a = SVAData(grammar=SMALL, seed=1)
    b = SVAData(grammar=SMALL, seed=2)  # run seed orders batches only
    c = SVAData(grammar=SMALL, split_seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.evals["test"].fingerprint() == b.evals["test"].fingerprint()


def test_grammar_data_lm_meta():
    dm = SVAData(grammar=SMALL, setup="lm")
    dm.setup()
    s = dm.evals["attractors_2"]
    rows = torch.arange(len(s))
    verb_pos = torch.as_tensor(s.meta["verb_pos"])
    assert (s.x[rows, verb_pos] == torch.as_tensor(s.meta["correct_id"])).all()
    ex = dm.examples["attractors_2"][0]
    assert dm.vocab.decode(s.x[0].tolist()) == ex.sentence
    assert dm.vocab.itos[s.meta["wrong_id"][0]] == ex.wrong_verb
    assert (s.meta["correct_id"] != s.meta["wrong_id"]).all()
    assert (s.meta["correct_id"] != dm.vocab.unk_id).all()


def test_tsv_source_protocol(tmp_path):
    rows = []
    for i in range(60):
        k = i % 3
        nouns = " ".join(["of the box"] * k)
        sent = f"the key{i % 7} {nouns} is here".split()
        rows.append(tsv_row(" ".join(sent), 2, len(sent) - 1, k, k if i % 2 else 0, "VBZ"))
    write_tsv(tmp_path / "agr_50_mostcommon_10K.tsv.gz", rows)
    dm = SVAData(source="linzen_tsv", data_dir=tmp_path, tsv_fractions=(0.5, 0.2, 0.3),
                 attractor_counts=(1, 2), min_count=1)
    dm.setup()
    assert len(dm.train) + len(dm.valid) + len(dm.evals["test"]) == 60
    ids = np.concatenate([dm.train.ids.numpy(), dm.valid.ids.numpy(), dm.evals["test"].ids.numpy()])
    assert sorted(ids.tolist()) == list(range(60))
    test_ids = set(dm.evals["test"].ids.tolist())
    for k in (1, 2):
        s = dm.evals[f"attractors_{k}"]
        assert set(s.ids.tolist()) <= test_ids
        assert (s.meta["attractors"] == k).all() and (s.meta["homogeneous"] == 1).all()
    assert (dm.evals["test"].meta["distance"] >= 1).all()
    # equal prefixes never straddle train and test
    train_prefixes = {" ".join(e.tokens) for e in dm.examples["train"]}
    assert not train_prefixes & {" ".join(e.tokens) for e in dm.examples["test"]}


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        SVAData(source="wiki")
    with pytest.raises(ConfigError):
        SVAData(setup="mlm")
    with pytest.raises(ConfigError, match="data_dir"):
        SVAData(source="linzen")
    with pytest.raises(FileNotFoundError, match="numpred.val"):
        SVAData(source="linzen", data_dir=tmp_path).setup()
    with pytest.raises(ValueError, match="probe_split"):
        SVAData(grammar=SMALL, probe_split="attractors_9").setup()


def write_numpred_dir(d: Path) -> Path:
    d.mkdir()
    lines = [f"{'VBZ' if i % 2 else 'VBP'}\tthe {'key' if i % 2 else 'keys'} w{i % 13} x{i % 5}" for i in range(200)]
    lines += ["VBP\tthe keys singleton"]
    lines += ["VBZ\tthe key w1 x1"] * 20  # a repeated prefix must stay within one part
    write(d / "numpred.val", "\n".join(lines) + "\n")
    for k in (1, 2, 3, 4):
        write(d / f"numpred.test.{k}", "".join(f"VBP\tthe keys {'of the box ' * k}z{i}\n" for i in range(10)))
    write(d / "extra.txt", "VBZ\tthe key w1\n")
    return d


@pytest.mark.parametrize("setup", ["classification", "lm"])
def test_linzen_protocol_on_fixture(tmp_path, setup):
    d = write_numpred_dir(tmp_path / "linzen")
    dm = SVAData(source="linzen", data_dir=tmp_path, setup=setup, extra_eval={"extra": d / "extra.txt"})
    dm.setup()
    assert set(dm.evals) == {"test", "attractors_1", "attractors_2", "attractors_3", "attractors_4", "extra"}
    parts = [dm.train.ids.numpy(), dm.valid.ids.numpy(), dm.evals["test"].ids.numpy()]
    assert sorted(np.concatenate(parts).tolist()) == list(range(221))  # a partition of numpred.val
    assert abs(len(dm.evals["test"]) - 22) <= 20 and abs(len(dm.valid) - 22) <= 20
    assert sum(bool((p >= 201).any()) for p in parts) == 1  # duplicates kept together
    a2 = dm.evals["attractors_2"].meta
    assert (a2["attractors"] == 2).all() and (a2["homogeneous"] == 1).all() and (a2["distance"] == -1).all()
    assert (dm.evals["test"].meta["attractors"] == -1).all()
    assert "w12" in dm.vocab and "singleton" not in dm.vocab and "z3" not in dm.vocab  # min_count=2 / eval-only tokens
    # "the keys of the box z<i>": of, box and z<i> are unknown
    assert dm.unk_rates()["attractors_1"] == pytest.approx(3 / (6 + (setup == "lm")))
    assert dm.unk_rates()["train"] < 0.01  # at most the singleton line
    if setup == "lm":
        s = dm.evals["test"]
        last = torch.as_tensor(s.meta["length"]) - 1
        assert (torch.as_tensor(s.meta["verb_pos"]) == last).all()
        number = s.x[torch.arange(len(s)), last]
        assert (number == torch.as_tensor(s.meta["correct_id"])).all()
        assert (number == 2 + s.y).all()  # <VBZ> = 2, <VBP> = 3


@needs_linzen
def test_linzen_real_data():
    dm = SVAData(source="linzen", data_dir=LINZEN.parent)
    dm.setup()
    n_val = len(dm.train) + len(dm.valid) + len(dm.evals["test"])
    assert n_val == 15772 and 0.75 < len(dm.train) / n_val < 0.85
    assert len(dm.evals["attractors_4"]) == 561 and len(dm.evals["attractors_1"]) == 52599
    assert 0.0 < dm.unk_rates()["attractors_1"] < 0.15
    assert dm.probe.x.shape[0] == 1000
    info = dm.summary()
    assert info["sizes"]["attractors_4"] == 561 and info["vocab_size"] == dm.vocab_size
