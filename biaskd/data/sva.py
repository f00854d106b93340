"""Subject–verb agreement data (Linzen et al. 2016): the vocabulary and the data module over the
synthetic grammar (default) or Linzen's files (readers: :mod:`biaskd.data.sva_examples`), in the
classification and the LM setup. Sources, splits, inputs and per-example metadata:
``docs/agreement-data.md``.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from biaskd.data import grammar as grammar_mod
from biaskd.data.base import PAD_ID, Split
from biaskd.data.datamodule import TaskData
from biaskd.errors import ConfigError, DataFormatError, MissingDataError

from biaskd.data.sva_examples import (  # noqa: F401  (the readers' names, as this module always offered them)
    LABEL_NAMES,
    LABELS,
    LINZEN_TSV_NAME,
    LINZEN_TSV_URL,
    POOL_ID_STRIDE,
    TSV_REQUIRED,
    SVAExample,
    download_linzen_tsv,
    examples_from_grammar,
    read_linzen_tsv,
    read_numpred,
)


# -- vocabulary ---------------------------------------------------------------------------------
class Vocab:
    """Token ↔ id map built from training token lists only.

    Ids: ``<pad>`` = 0 (= ``PAD_ID``), ``<unk>`` = 1, ``<VBZ>`` = 2, ``<VBP>`` = 3 (the LM
    setup's number tokens, always reserved so ids do not depend on the setup), then tokens
    with count ≥ ``min_count`` by decreasing count, ties alphabetically. Any other token —
    in particular tokens first seen at evaluation time — encodes as ``<unk>``.
    """

    PAD, UNK, VBZ, VBP = "<pad>", "<unk>", "<VBZ>", "<VBP>"
    SPECIALS = (PAD, UNK, VBZ, VBP)

    def __init__(self, itos: Sequence[str]) -> None:
        if tuple(itos[: len(self.SPECIALS)]) != self.SPECIALS:
            raise ValueError(f"vocabulary must start with {self.SPECIALS}")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")
        assert self.stoi[self.PAD] == PAD_ID

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> "Vocab":
        counts = Counter(t for toks in token_lists for t in toks)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in cls.SPECIALS),
                      key=lambda t: (-counts[t], t))
        return cls(list(cls.SPECIALS) + kept)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return self.stoi[self.UNK]

    def number_id(self, label: int) -> int:
        """Id of the number token for label 0 (``<VBZ>``) or 1 (``<VBP>``)."""
        return self.stoi[(self.VBZ, self.VBP)[label]]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.stoi[self.UNK])

    def encode(
        self, token_lists: Sequence[Sequence[str]], max_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids ``(n, L)`` and lengths ``(n,)``.

        L is the longest sequence (at least 1), or exactly ``max_len`` when given; longer
        sequences then keep their *last* ``max_len`` tokens — those nearest the verb.
        """
        get, unk = self.stoi.get, self.stoi[self.UNK]
        if max_len is not None:
            if max_len < 1:
                raise ValueError(f"max_len must be positive, got {max_len}")
            token_lists = [toks[-max_len:] if len(toks) > max_len else toks for toks in token_lists]
        lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        width = max_len if max_len is not None else max(int(lengths.max(initial=0)), 1)
        flat = np.fromiter((get(t, unk) for toks in token_lists for t in toks), dtype=np.int64,
                           count=int(lengths.sum()))
        ids = np.full((len(token_lists), width), PAD_ID, dtype=np.int64)
        ids[np.arange(width)[None, :] < lengths[:, None]] = flat
        return torch.from_numpy(ids), torch.from_numpy(lengths)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids if i != PAD_ID]

    def to_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Vocab":
        return cls(d["itos"])


def unk_rate(x: torch.Tensor, unk_id: int = 1) -> float:
    """Fraction of non-pad tokens in padded ids ``x`` that are ``<unk>``."""
    real = x != PAD_ID
    n = int(real.sum())
    return float(((x == unk_id) & real).sum()) / n if n else 0.0


# -- DataModule ----------------------------------------------------------------------------------
def _grouped_partition(keys: Sequence[str], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded partition of ``range(len(keys))`` into parts of roughly the given fractions
    (the first part takes what is left), keeping equal keys in the same part."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    members = list(groups.values())
    order = np.random.default_rng(seed).permutation(len(members))
    n = len(keys)
    targets = [int(round(f * n)) for f in fractions[1:]]
    parts: list[list[int]] = [[] for _ in fractions]
    part, filled = 1, 0
    for g in order:
        while part < len(fractions) and filled >= targets[part - 1]:
            part, filled = part + 1, 0
        dest = part if part < len(fractions) else 0
        parts[dest].extend(members[g])
        filled += len(members[g])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


class SVAData(TaskData):
    """Subject–verb agreement as in-memory token tensors (see the module docstring).

    Call :meth:`setup` before reading ``vocab``/``vocab_size``.
    """

    task = "sva"
    input_kind = "tokens"

    def __init__(
        self,
        source: str = "grammar",
        data_dir: str | os.PathLike | None = None,
        setup: str = "classification",
        min_count: int = 2,
        valid_fraction: float = 0.1,
        test_fraction: float = 0.1,
        extra_eval: Mapping[str, str | os.PathLike | Mapping] | None = None,
        split_seed: int = 0,
        max_len: int | None = None,
        grammar: Mapping | grammar_mod.GrammarConfig | None = None,
        tsv_path: str | os.PathLike | None = None,
        tsv_fractions: Sequence[float] = (0.09, 0.01, 0.90),
        max_eval: int | None = 200_000,
        attractor_counts: Sequence[int] = (1, 2, 3, 4),
        transfer_pool: Mapping | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        seed: int = 0,
        probe_split: str = "test",
        probe_size: int = 1000,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, probe_split, probe_size)
        if source not in ("grammar", "linzen", "linzen_tsv"):
            raise ConfigError(f"sva source must be 'grammar', 'linzen' or 'linzen_tsv', got {source!r}")
        if setup not in ("classification", "lm"):
            raise ConfigError(f"sva setup must be 'classification' or 'lm', got {setup!r}")
        if (source == "linzen" and data_dir is None) or (source == "linzen_tsv" and data_dir is None and tsv_path is None):
            raise ConfigError(f"sva source {source!r} needs data_dir (the directory with the Linzen files)")
        if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
            raise ConfigError(f"bad valid_fraction/test_fraction {valid_fraction}/{test_fraction}")
        if len(tsv_fractions) != 3 or abs(sum(tsv_fractions) - 1) > 1e-6 or min(tsv_fractions) < 0:
            raise ConfigError(f"tsv_fractions must be three non-negative numbers summing to 1, got {tsv_fractions}")
        self.source = source
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.setup_kind = setup
        self.min_count = min_count
        self.valid_fraction = valid_fraction
        self.test_fraction = test_fraction
        self.extra_eval = dict(extra_eval or {})
        self.split_seed = split_seed
        self.max_len = max_len
        if isinstance(grammar, grammar_mod.GrammarConfig):
            self.grammar_config = grammar
        else:  # the grammar's seed is split_seed unless the grammar options set one
            self.grammar_config = grammar_mod.GrammarConfig.from_dict({"seed": split_seed, **dict(grammar or {})})
        self.tsv_path = Path(tsv_path) if tsv_path is not None else None
        self.tsv_fractions = tuple(tsv_fractions)
        self.max_eval = max_eval
        self.attractor_counts = tuple(int(k) for k in attractor_counts)
        self.transfer_pool = self._check_pool(transfer_pool, source)
        self.pool: list[SVAExample] = []
        self.pool_ids = np.zeros(0, dtype=np.int64)
        self.num_classes = 2
        self.vocab: Vocab | None = None
        #: the examples behind every split, by split name (for inspection and reports)
        self.examples: dict[str, list[SVAExample]] = {}

    @staticmethod
    def _check_pool(pool: Mapping | None, source: str) -> dict | None:
        if not pool:
            return None
        pool = dict(pool)
        unknown = sorted(set(pool) - {"files", "fraction"})
        if unknown:
            raise ConfigError(f"config key 'task.transfer_pool.{unknown[0]}': unknown (options: files, fraction)")
        if source != "linzen":
            raise ConfigError(f"config key 'task.transfer_pool': held-out transfer pools need source 'linzen', got {source!r}")
        files = [int(k) for k in pool.get("files", (1, 2))]
        fraction = float(pool.get("fraction", 0.5))
        if not files or not 0 < fraction < 1:
            raise ConfigError(f"config key 'task.transfer_pool': need files and 0 < fraction < 1, got {pool}")
        return {"files": files, "fraction": fraction}

    # -- loading --------------------------------------------------------------------------
    def _linzen_dir(self) -> Path:
        d = self.data_dir
        if d is not None and not (d / "numpred.val").exists() and (d / "linzen").is_dir():
            d = d / "linzen"
        return d

    def _load_linzen(self) -> dict[str, list[SVAExample]]:
        d = self._linzen_dir()
        val_path = d / "numpred.val"
        if not val_path.exists():
            raise MissingDataError(f"{val_path} not found (sva source 'linzen' needs numpred.val in data_dir)")
        pool = read_numpred(val_path)
        f_train = 1 - self.valid_fraction - self.test_fraction
        train, valid, test = _grouped_partition(
            [" ".join(e.tokens) for e in pool], (f_train, self.valid_fraction, self.test_fraction), self.split_seed
        )
        out = {"train": [pool[i] for i in train], "valid": [pool[i] for i in valid], "test": [pool[i] for i in test]}
        self._ids = {"train": train, "valid": valid, "test": test}
        pool_files = self.transfer_pool["files"] if self.transfer_pool else []
        self.pool, pool_ids = [], []
        for k in sorted(set(self.attractor_counts) | set(pool_files)):
            p = d / f"numpred.test.{k}"
            if not p.exists():
                raise MissingDataError(f"{p} not found (sva source 'linzen' evaluates on numpred.test.{k})")
            examples = read_numpred(p, attractors=k)
            if k in pool_files:  # reserve a seeded part (whole prefixes) as transfer inputs
                f = self.transfer_pool["fraction"]
                keep, reserved = _grouped_partition([" ".join(e.tokens) for e in examples], (1 - f, f),
                                                    self.split_seed + 1000 + k)
                self.pool += [examples[i] for i in reserved]
                pool_ids.append(k * POOL_ID_STRIDE + reserved)
                self._ids[f"attractors_{k}"] = keep
                examples = [examples[i] for i in keep]
            if k in self.attractor_counts:
                out[f"attractors_{k}"] = examples
        self.pool_ids = np.concatenate(pool_ids) if pool_ids else np.zeros(0, dtype=np.int64)
        return out

    def _load_tsv(self) -> dict[str, list[SVAExample]]:
        path = self.tsv_path
        if path is None:
            for name in (LINZEN_TSV_NAME, LINZEN_TSV_NAME[: -len(".gz")]):
                for d in (self.data_dir, self.data_dir / "linzen"):
                    if (d / name).exists():
                        path = d / name
                        break
                if path is not None:
                    break
        if path is None or not path.exists():
            raise MissingDataError(
                f"{LINZEN_TSV_NAME} not found in {self.data_dir} (get it with biaskd.data.sva.download_linzen_tsv)"
            )
        pool = read_linzen_tsv(path, keep_sentence=False)  # the LM setup uses number tokens here
        train, valid, test = _grouped_partition([" ".join(e.tokens) for e in pool], self.tsv_fractions, self.split_seed)
        out = {"train": [pool[i] for i in train], "valid": [pool[i] for i in valid]}
        self._ids = {"train": train, "valid": valid}
        for k in self.attractor_counts:
            sel = np.asarray([i for i in test if pool[i].homogeneous == 1 and pool[i].attractors == k], dtype=np.int64)
            out[f"attractors_{k}"] = [pool[i] for i in sel]
            self._ids[f"attractors_{k}"] = sel
        if self.max_eval is not None and len(test) > self.max_eval:
            rng = np.random.default_rng(self.split_seed + 1)
            test = np.sort(rng.choice(test, self.max_eval, replace=False))
        out["test"] = [pool[i] for i in test]
        self._ids["test"] = test
        return out

    def _load_grammar(self) -> dict[str, list[SVAExample]]:
        splits = grammar_mod.make_splits(self.grammar_config)
        return {name: examples_from_grammar(s) for name, s in splits.items()}

    # -- encoding -------------------------------------------------------------------------
    def inputs(self, examples: Sequence[SVAExample]) -> list[list[str]]:
        """Token lists fed to the model for this setup (see the module docstring)."""
        if self.setup_kind == "classification":
            return [e.tokens for e in examples]
        if self.source == "grammar":
            return [e.sentence for e in examples]
        return [e.tokens + [(Vocab.VBZ, Vocab.VBP)[e.label]] for e in examples]

    def _encode(self, name: str, examples: list[SVAExample], train_keys: set[str]) -> Split:
        vocab = self.vocab
        toks = self.inputs(examples)
        x, lengths = vocab.encode(toks, self.max_len)

        def col(attr: str) -> np.ndarray:
            return np.fromiter((getattr(e, attr) for e in examples), dtype=np.int64, count=len(examples))

        meta = {
            "attractors": col("attractors"),
            "n_intervening": col("n_intervening"),
            "distance": col("distance"),
            "homogeneous": col("homogeneous"),
            "depth": col("depth"),
            "length": lengths.numpy().copy(),
            "seen_in_train": np.fromiter((" ".join(t) in train_keys for t in toks), dtype=np.int64, count=len(toks)),
        }
        if self.setup_kind == "lm":
            full = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
            cut = full - lengths.numpy()  # tokens dropped on the left by max_len
            if self.source == "grammar":
                verb = np.fromiter((len(e.tokens) for e in examples), dtype=np.int64, count=len(examples))
                correct = [vocab[e.correct_verb] for e in examples]
                wrong = [vocab[e.wrong_verb] for e in examples]
            else:
                verb = full - 1
                correct = [vocab.number_id(e.label) for e in examples]
                wrong = [vocab.number_id(1 - e.label) for e in examples]
            meta["verb_pos"] = verb - cut
            meta["correct_id"] = np.asarray(correct, dtype=np.int64)
            meta["wrong_id"] = np.asarray(wrong, dtype=np.int64)
            if (meta["verb_pos"] < 1).any():
                raise ConfigError(f"max_len={self.max_len} cuts the verb's left context in split {name!r}")
            if ((meta["correct_id"] == vocab.unk_id) | (meta["wrong_id"] == vocab.unk_id)).any():
                warnings.warn(f"sva split {name!r}: some candidate verb forms are not in the vocabulary", stacklevel=2)
        ids = getattr(self, "_ids", {}).get(name)
        ids = torch.as_tensor(ids if ids is not None else np.arange(len(examples)), dtype=torch.long)
        y = torch.tensor([e.label for e in examples], dtype=torch.long)
        return Split(name=name, x=x, y=y, ids=ids, meta=meta)

    def build(self) -> tuple[Split, Split, dict[str, Split]]:
        self._ids = {}
        if self.source == "grammar":
            examples = self._load_grammar()
        elif self.source == "linzen":
            examples = self._load_linzen()
        else:
            examples = self._load_tsv()
        for name, spec in self.extra_eval.items():
            if name in examples:
                raise ConfigError(f"extra_eval name {name!r} clashes with a built-in sva split")
            if isinstance(spec, Mapping):
                examples[name] = read_numpred(spec["path"], attractors=spec.get("attractors"))
            else:
                examples[name] = read_numpred(spec)
        for name in ("train", "valid"):
            if not examples[name]:
                raise DataFormatError(f"sva split {name!r} is empty (source {self.source!r})")
        for name in [n for n, ex in examples.items() if not ex]:
            warnings.warn(f"sva eval split {name!r} is empty and is left out", stacklevel=2)
            del examples[name]
        self.examples = examples
        train_inputs = self.inputs(examples["train"])
        self.vocab = Vocab.build(train_inputs, self.min_count)
        self.vocab_size = len(self.vocab)
        train_keys = self._train_keys = {" ".join(t) for t in train_inputs}
        splits = {name: self._encode(name, ex, train_keys) for name, ex in examples.items()}
        train, valid = splits.pop("train"), splits.pop("valid")
        return train, valid, splits

    def transfer_candidates(self, spec, n: int | None) -> Split:
        """``heldout``: the reserved numpred.test lines in a seeded order (ids ``k·10⁶ + line``,
        0-based); ``grammar``: new grammar sentences (ids = draw order). Gold labels in ``y``."""
        self.setup()
        if spec.source == "heldout":
            if not self.pool:
                raise ConfigError("config key 'transfer.source': 'heldout' needs a task with a held-out pool "
                                  "(task.transfer_pool, e.g. task=sva_linzen_transfer)")
            order = np.random.default_rng(spec.seed).permutation(len(self.pool))[:n]
            split = self._encode("transfer", [self.pool[i] for i in order], self._train_keys)
            split.ids = torch.as_tensor(self.pool_ids[order])
            return split
        if spec.source == "grammar":
            if self.source != "grammar":
                raise ConfigError(f"config key 'transfer.source': 'grammar' needs sva source 'grammar', got {self.source!r}")
            g = self.grammar_config
            o = {k: v for k, v in spec.options.items() if v is not None}
            seen = {" ".join(e.sentence) for ex in self.examples.values() for e in ex if e.sentence}
            sentences = grammar_mod.generate(
                n, f"{g.seed}/transfer/{spec.seed}", min_depth=o.get("min_depth", g.train_min_depth),
                max_depth=o.get("max_depth", g.train_max_depth), attractor_prob=o.get("attractor_prob", g.attractor_prob),
                rc_prob=g.rc_prob, orc_share=g.orc_share, adj_prob=g.adj_prob, intro_prob=g.intro_prob,
                copula_prob=g.copula_prob, max_distance=g.max_distance, exclude=seen,
            )
            return self._encode("transfer", examples_from_grammar(sentences), self._train_keys)
        return super().transfer_candidates(spec, n)

    def summary(self) -> dict:
        """Sizes, vocabulary and UNK rates: what a run dir should record about its data."""
        self.setup()
        sizes = {"train": len(self.train), "valid": len(self.valid)}
        sizes.update({name: len(split) for name, split in self.evals.items()})
        return {
            "task": self.task, "source": self.source, "setup": self.setup_kind,
            "split_seed": self.split_seed, "min_count": self.min_count, "vocab_size": self.vocab_size,
            "sizes": sizes, "unk_rates": self.unk_rates(), "fingerprint": self.fingerprint(),
            "transfer_pool": None if not self.transfer_pool else {**self.transfer_pool, "n": len(self.pool)},
        }

    def unk_rates(self) -> dict[str, float]:
        """Fraction of ``<unk>`` tokens per split (train, valid and every eval split)."""
        self.setup()
        unk = self.vocab.unk_id
        out = {"train": unk_rate(self.train.x, unk), "valid": unk_rate(self.valid.x, unk)}
        out.update({name: unk_rate(s.x, unk) for name, s in self.evals.items()})
        return out
