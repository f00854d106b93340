"""Property-based tests: arbitrary input gives a correct parse or the project's own error, never
another exception or a hang."""
import copy
import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from biaskd.config import validate
from biaskd.data.sva import read_linzen_tsv, read_numpred
from biaskd.errors import ConfigError, DataFormatError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

label = st.sampled_from(["VBZ", "VBP", "vbz", "NN", "", "VBZ\t", "VBP "])
word = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=8)
numpred_line = st.one_of(
    st.builds(lambda l, ws: f"{l}\t{' '.join(ws)}", label, st.lists(word, max_size=6)),
    st.text(max_size=30),
)


@FUZZ
@given(st.lists(numpred_line, max_size=8), st.booleans())
def test_numpred_reader_parses_or_raises_data_format_error(tmp_path, lines, gz):
    path = tmp_path / ("f.numpred.gz" if gz else "f.numpred")
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        examples = read_numpred(path)
    except DataFormatError as exc:
        assert str(path) in str(exc)
        return
    assert examples and all(e.label in (0, 1) and e.tokens for e in examples)


@FUZZ
@given(st.binary(max_size=300))
def test_numpred_reader_on_arbitrary_bytes(tmp_path, blob):
    path = tmp_path / "raw.numpred"
    path.write_bytes(blob)
    try:
        read_numpred(path)
    except DataFormatError:
        pass


TSV_HEADER = ["sentence", "orig_sentence", "pos_sentence", "subj", "verb", "subj_pos", "has_rel",
              "has_nsubj", "verb_pos", "subj_index", "verb_index", "n_intervening", "n_diff_intervening",
              "distance", "is_transitive"]
cell = st.one_of(st.integers(-3, 30).map(str), st.sampled_from(["VBZ", "VBP", "NN", "the dog runs", ""]),
                 st.text(max_size=10))


@FUZZ
@given(st.lists(st.lists(cell, min_size=0, max_size=len(TSV_HEADER) + 1), max_size=5),
       st.permutations(TSV_HEADER))
def test_linzen_tsv_reader_parses_or_raises_data_format_error(tmp_path, rows, header):
    path = tmp_path / "agr.tsv"
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]), encoding="utf-8",
                    errors="surrogatepass")
    try:
        read_linzen_tsv(path)
    except DataFormatError as exc:
        assert str(path) in str(exc)


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.lists(st.integers(-2, 5), max_size=3),
)
KEYS = ["distill.alpha", "distill.temperature", "distill.final_alpha", "distill.alpha_schedule",
        "distill.teacher_outputs", "distill.mode", "distill.objective", "train.lr", "train.batch_size",
        "train.weight_decay", "trainer.max_epochs", "seed", "model.hidden", "model.dropout", "teacher.task"]


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from biaskd.tools.cli import CONF_DIR
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["task=toy", "model=mlp_small", "model@teacher.model=cnn_small",
                                            "distill=cross", f"runs_dir={tmp_path_factory.mktemp('runs')}"])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_config_validation_accepts_or_raises_config_error(base_cfg, changes):
    cfg = copy.deepcopy(base_cfg)
    OmegaConf.set_struct(cfg, False)
    for key, value in changes:
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        validate(cfg)
    except ConfigError:
        return
    # accepted: every numeric hyperparameter is in range and finite
    a, t = cfg.distill.alpha, cfg.distill.temperature
    assert isinstance(a, (int, float)) and 0 <= a <= 1
    assert isinstance(t, (int, float)) and 0 < t < float("inf")
    assert isinstance(cfg.train.lr, (int, float)) and 0 < cfg.train.lr < float("inf")
    assert isinstance(cfg.train.batch_size, int) and not isinstance(cfg.train.batch_size, bool) and cfg.train.batch_size > 0
