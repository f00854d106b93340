"""A synthetic English agreement grammar, the offline default for subject–verb agreement: exact
control of attractors, distance and depth, and eval splits deeper than training. Sentence
shapes and metadata: ``docs/agreement-data.md`` ("The synthetic grammar").
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields

from biaskd.errors import ConfigError

SG, PL = 0, 1  # number codes; equal to the SVA labels (0 = singular VBZ, 1 = plural VBP)


@dataclass(frozen=True)
class Lexicon:
    """Word lists; every noun/verb entry is a ``(singular, plural)`` pair.

    The categories are disjoint so that a sentence can be parsed back unambiguously.
    """

    nouns: tuple[tuple[str, str], ...] = (
        ("key", "keys"), ("cabinet", "cabinets"), ("man", "men"), ("woman", "women"),
        ("door", "doors"), ("child", "children"), ("author", "authors"), ("teacher", "teachers"),
        ("dog", "dogs"), ("box", "boxes"), ("table", "tables"), ("city", "cities"),
        ("pilot", "pilots"), ("farmer", "farmers"), ("book", "books"), ("painting", "paintings"),
        ("student", "students"), ("doctor", "doctors"), ("window", "windows"),
        ("friend", "friends"), ("manager", "managers"), ("house", "houses"),
        ("letter", "letters"), ("bottle", "bottles"), ("garden", "gardens"),
        ("church", "churches"), ("company", "companies"), ("road", "roads"),
        ("lawyer", "lawyers"), ("picture", "pictures"),
    )
    #: transitive verbs: used in relative clauses and as main verbs
    verbs: tuple[tuple[str, str], ...] = (
        ("sees", "see"), ("likes", "like"), ("admires", "admire"), ("knows", "know"),
        ("finds", "find"), ("helps", "help"), ("follows", "follow"), ("remembers", "remember"),
        ("describes", "describe"), ("avoids", "avoid"), ("greets", "greet"), ("trusts", "trust"),
        ("praises", "praise"), ("ignores", "ignore"), ("blames", "blame"), ("fears", "fear"),
        ("visits", "visit"), ("carries", "carry"), ("has", "have"), ("loves", "love"),
    )
    #: main verbs only, followed by an adjective
    copulas: tuple[tuple[str, str], ...] = (("is", "are"),)
    adjectives: tuple[str, ...] = (
        "old", "new", "red", "small", "large", "quiet", "famous", "busy", "young", "strange",
    )
    #: number-neutral determiners (no "this/these", which would give the number away)
    determiners: tuple[str, ...] = ("the", "my", "your", "our", "his", "her", "their")
    prepositions: tuple[str, ...] = (
        "to", "near", "behind", "beside", "under", "above", "with", "of", "from", "on", "for", "by",
    )
    intro_prepositions: tuple[str, ...] = ("after", "before", "despite")
    relativizer: str = "that"
    comma: str = ","

    def __post_init__(self) -> None:
        groups = {
            "nouns": {w for pair in self.nouns for w in pair},
            "verbs": {w for pair in self.verbs + self.copulas for w in pair},
            "adjectives": set(self.adjectives),
            "determiners": set(self.determiners),
            "prepositions": set(self.prepositions) | set(self.intro_prepositions),
            "function": {self.relativizer, self.comma},
        }
        names = list(groups)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = groups[a] & groups[b]
                if both:
                    raise ValueError(f"lexicon categories {a} and {b} share words {sorted(both)}")
        for name, pairs in (("nouns", self.nouns), ("verbs", self.verbs + self.copulas)):
            for sg, pl in pairs:
                if sg == pl:
                    raise ValueError(f"{name}: singular and plural forms of {sg!r} are identical")

    def words(self) -> list[str]:
        """Every word the grammar can produce (used to check vocabulary coverage)."""
        out = [w for pair in self.nouns + self.verbs + self.copulas for w in pair]
        out += list(self.adjectives + self.determiners + self.prepositions + self.intro_prepositions)
        return out + [self.relativizer, self.comma]


LEXICON = Lexicon()


@dataclass(frozen=True)
class AgreementSentence:
    """One generated sentence with exact agreement metadata (see the module docstring)."""

    tokens: tuple[str, ...]
    subject_index: int
    verb_index: int
    label: int  # number of the subject = number of the correct main verb (0 sg, 1 pl)
    depth: int
    n_intervening: int
    attractors: int
    correct_verb: str
    wrong_verb: str
    structure: tuple[str, ...]  # phrase types in order, e.g. ("PP", "ORC")

    @property
    def prefix(self) -> tuple[str, ...]:
        """Tokens up to, excluding, the main verb (the classification input)."""
        return self.tokens[: self.verb_index]

    @property
    def distance(self) -> int:
        return self.verb_index - self.subject_index

    @property
    def homogeneous(self) -> bool:
        return self.attractors == self.n_intervening

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def _noun_phrase(rng: random.Random, lex: Lexicon, number: int, adj_prob: float) -> list[str]:
    out = [rng.choice(lex.determiners)]
    if rng.random() < adj_prob:
        out.append(rng.choice(lex.adjectives))
    out.append(rng.choice(lex.nouns)[number])
    return out


def sample_sentence(
    rng: random.Random,
    depth: int,
    attractor_prob: float = 0.3,
    rc_prob: float = 0.4,
    orc_share: float = 0.5,
    adj_prob: float = 0.2,
    intro_prob: float = 0.2,
    copula_prob: float = 0.3,
    lexicon: Lexicon = LEXICON,
) -> AgreementSentence:
    """One sentence with exactly ``depth`` intervening phrases (hence nouns).

    Each intervening noun has the other number than the subject with probability
    ``attractor_prob``; each phrase is a relative clause with probability ``rc_prob``
    (object-relative with probability ``orc_share`` among those), else a PP.
    """
    lex = lexicon
    tokens: list[str] = []
    if rng.random() < intro_prob:
        tokens.append(rng.choice(lex.intro_prepositions))
        tokens += _noun_phrase(rng, lex, rng.randrange(2), adj_prob)
        tokens.append(lex.comma)
    subject_number = rng.randrange(2)
    tokens += _noun_phrase(rng, lex, subject_number, adj_prob)
    subject_index = len(tokens) - 1

    head_number = subject_number  # number of the noun the next phrase attaches to
    attractors = 0
    structure: list[str] = []
    open_orc_verbs: list[str] = []
    for _ in range(depth):
        number = 1 - subject_number if rng.random() < attractor_prob else subject_number
        attractors += number != subject_number
        if rng.random() < rc_prob:
            if rng.random() < orc_share:
                kind = "ORC"
                tokens.append(lex.relativizer)
                tokens += _noun_phrase(rng, lex, number, adj_prob)
                open_orc_verbs.append(rng.choice(lex.verbs)[number])
            else:
                kind = "SRC"
                tokens += [lex.relativizer, rng.choice(lex.verbs)[head_number]]
                tokens += _noun_phrase(rng, lex, number, adj_prob)
        else:
            kind = "PP"
            tokens.append(rng.choice(lex.prepositions))
            tokens += _noun_phrase(rng, lex, number, adj_prob)
        structure.append(kind)
        head_number = number
    tokens += reversed(open_orc_verbs)  # innermost object relative closes first

    verb_index = len(tokens)
    copula = rng.random() < copula_prob
    pair = rng.choice(lex.copulas if copula else lex.verbs)
    tokens.append(pair[subject_number])
    if copula:
        tokens.append(rng.choice(lex.adjectives))
    else:
        tokens += _noun_phrase(rng, lex, rng.randrange(2), adj_prob)
    return AgreementSentence(
        tokens=tuple(tokens),
        subject_index=subject_index,
        verb_index=verb_index,
        label=subject_number,
        depth=depth,
        n_intervening=depth,
        attractors=attractors,
        correct_verb=pair[subject_number],
        wrong_verb=pair[1 - subject_number],
        structure=tuple(structure),
    )


def generate(
    n: int,
    seed: int | str,
    min_depth: int = 0,
    max_depth: int = 4,
    attractor_prob: float = 0.3,
    rc_prob: float = 0.4,
    orc_share: float = 0.5,
    adj_prob: float = 0.2,
    intro_prob: float = 0.2,
    copula_prob: float = 0.3,
    max_distance: int | None = None,
    exclude: set[str] | None = None,
    lexicon: Lexicon = LEXICON,
    max_tries: int | None = None,
) -> list[AgreementSentence]:
    """``n`` distinct sentences, depth uniform in ``[min_depth, max_depth]``.

    Sentences whose distance exceeds ``max_distance`` or whose text is in ``exclude`` (or was
    already produced) are redrawn, so the output has no duplicates. If the grammar cannot
    produce ``n`` such sentences within ``max_tries`` draws (default ``50 n + 1000``) this
    raises ``ValueError`` instead of looping forever.
    """
    if not 0 <= min_depth <= max_depth:
        raise ValueError(f"need 0 <= min_depth <= max_depth, got {min_depth}, {max_depth}")
    for name, p in (("attractor_prob", attractor_prob), ("rc_prob", rc_prob), ("orc_share", orc_share),
                    ("adj_prob", adj_prob), ("intro_prob", intro_prob), ("copula_prob", copula_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    rng = random.Random(str(seed))
    seen = set() if exclude is None else exclude
    out: list[AgreementSentence] = []
    tries = 0
    limit = max_tries if max_tries is not None else 50 * n + 1000
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise ValueError(
                f"could only generate {len(out)} of {n} distinct sentences with depth "
                f"{min_depth}..{max_depth}, max_distance={max_distance} in {limit} draws"
            )
        s = sample_sentence(
            rng, rng.randint(min_depth, max_depth), attractor_prob, rc_prob, orc_share,
            adj_prob, intro_prob, copula_prob, lexicon,
        )
        if max_distance is not None and s.distance > max_distance:
            continue
        text = s.text
        if text in seen:
            continue
        seen.add(text)
        out.append(s)
    return out


@dataclass
class GrammarConfig:
    """Sizes and knobs of the grammar splits (see :func:`make_splits`)."""

    seed: int = 0
    n_train: int = 10_000
    n_valid: int = 1_000
    n_test: int = 2_000
    n_deep: int = 2_000
    n_attractors: int = 1_000
    train_min_depth: int = 0
    #: d_train: training (and ``valid``/``test``) depth is at most this
    train_max_depth: int = 4
    #: ``test_deep`` has depth in ``(train_max_depth, deep_max_depth]``
    deep_max_depth: int = 7
    attractor_counts: tuple[int, ...] = (1, 2, 3, 4)
    attractor_prob: float = 0.3
    rc_prob: float = 0.4
    orc_share: float = 0.5
    adj_prob: float = 0.2
    intro_prob: float = 0.2
    copula_prob: float = 0.3
    max_distance: int | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "GrammarConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown grammar options {sorted(unknown)} (known: {sorted(known)})")
        if "attractor_counts" in d:
            d["attractor_counts"] = tuple(int(k) for k in d["attractor_counts"])
        return cls(**d)


def make_splits(cfg: GrammarConfig | None = None, lexicon: Lexicon = LEXICON) -> dict[str, list[AgreementSentence]]:
    """The grammar's standard splits, pairwise free of duplicate sentences.

    - ``train``, ``valid``, ``test``: depth in ``[train_min_depth, train_max_depth]``
      (``test`` is the in-distribution held-out set);
    - ``test_deep``: depth in ``(train_max_depth, deep_max_depth]`` — generalisation beyond
      the training depth;
    - ``attractors_k``: depth exactly k with every intervening noun an attractor (exactly k
      attractors, homogeneous), like Linzen's ``numpred.test.k``.

    Splits are generated in this order, each excluding every sentence produced before it;
    each draws from its own random stream (seeded by ``seed`` and the split name). Sentences
    are unique across splits, but short *prefixes* (depth 0) recur, as in natural data.
    """
    cfg = cfg or GrammarConfig()
    if cfg.deep_max_depth <= cfg.train_max_depth:
        raise ValueError(
            f"deep_max_depth ({cfg.deep_max_depth}) must exceed train_max_depth ({cfg.train_max_depth})"
        )
    common = dict(
        rc_prob=cfg.rc_prob, orc_share=cfg.orc_share, adj_prob=cfg.adj_prob,
        intro_prob=cfg.intro_prob, copula_prob=cfg.copula_prob, max_distance=cfg.max_distance,
        lexicon=lexicon,
    )
    seen: set[str] = set()
    in_dist = dict(min_depth=cfg.train_min_depth, max_depth=cfg.train_max_depth,
                   attractor_prob=cfg.attractor_prob, **common)
    splits: dict[str, list[AgreementSentence]] = {}
    for name, n in (("train", cfg.n_train), ("valid", cfg.n_valid), ("test", cfg.n_test)):
        splits[name] = generate(n, f"{cfg.seed}/{name}", exclude=seen, **in_dist)
    splits["test_deep"] = generate(
        cfg.n_deep, f"{cfg.seed}/test_deep", min_depth=cfg.train_max_depth + 1,
        max_depth=cfg.deep_max_depth, attractor_prob=cfg.attractor_prob, exclude=seen, **common,
    )
    for k in cfg.attractor_counts:
        splits[f"attractors_{k}"] = generate(
            cfg.n_attractors, f"{cfg.seed}/attractors_{k}", min_depth=k, max_depth=k,
            attractor_prob=1.0, exclude=seen, **common,
        )
    return splits
