"""``seqkd``: sequence-level KD for the LM setup (Kim & Rush 2016). Not a loss term on the batch's
outputs but a way to make the student's training data: it trains with plain next-token
cross-entropy on sentences the teacher *generates* (:mod:`biaskd.run.teacher_sentences`). This module
holds only its name and options, so that config validation knows it without the training code.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from biaskd.errors import ConfigError
from biaskd.objectives.base import check_options

PROMPTS = ("verb", "tokens")
MIXES = ("teacher", "interpolate")
VERBS = ("candidates", "free")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class SequenceLevelKD:
    """Options (``distill.seqkd.*``):

    - ``beam_width`` (int ≥ 1, default 5, Kim & Rush's beam): 1 = greedy decoding;
    - ``prompt``: ``verb`` (default) keeps every token before the verb (``verb_pos``), so the
      teacher chooses the verb / number token and writes the rest of the sentence; ``tokens``
      keeps the first ``prompt_tokens`` tokens (at most length − 1);
    - ``prompt_tokens`` (int ≥ 1, default 2): the prompt length for ``prompt=tokens``;
    - ``verb``: ``candidates`` (default) lets the teacher write only the sentence's two verb forms
      at its verb position; ``free``: any token there;
    - ``mix``: ``teacher`` (default, Seq-KD) trains on the teacher's best beam sequence;
      ``interpolate`` (Seq-Inter) on the beam candidate closest to the gold sentence (smoothed
      sentence BLEU), which needs ``beam_width`` ≥ 2.
    """

    name: ClassVar[str] = "seqkd"
    #: the student's training sequences come from the teacher (the driver builds them once)
    sequence_level: ClassVar[bool] = True
    #: generation needs a language model: the LM setup only
    lm_only: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    trains_logits: ClassVar[bool] = True
    reads_temperature: ClassVar[bool] = False
    options: ClassVar[dict[str, tuple | None]] = {"beam_width": None, "prompt": PROMPTS, "prompt_tokens": None,
                                                  "verb": VERBS, "mix": MIXES}
    defaults: ClassVar[dict[str, Any]] = {"beam_width": 5, "prompt": "verb", "prompt_tokens": 2,
                                          "verb": "candidates", "mix": "teacher"}

    @classmethod
    def check_options(cls, options: Mapping[str, Any], prefix: str) -> None:
        check_options(cls.name, cls.options, options, prefix)
        for key in ("beam_width", "prompt_tokens"):
            if key in options and not _positive_int(options[key]):
                raise ConfigError(f"config key '{prefix}.{key}' must be an integer >= 1, got {options[key]!r}")
        width = options.get("beam_width", cls.defaults["beam_width"])
        if options.get("mix", "teacher") == "interpolate" and width < 2:
            raise ConfigError(
                f"config key '{prefix}.beam_width' must be >= 2 for mix=interpolate: it picks the candidate "
                f"closest to the gold sentence among the teacher's beam (width 1 = mix=teacher); got {width}"
            )

    @classmethod
    def config_options(cls, distill: Mapping[str, Any]) -> dict[str, Any]:
        """The generation and selection options, defaults filled in (``meta.json``'s ``objective_options``)."""
        given = distill.get(cls.name) or {}
        return {k: given.get(k, default) for k, default in cls.defaults.items()}


def not_lm_message(setup: str = "classification") -> str:
    return (f"distill.objective=seqkd is sequence-level KD (Kim & Rush 2016): the student trains on sentences "
            f"the teacher generates, which needs the LM setup (task.setup=lm) with causal models; got "
            f"task setup {setup!r}. For classification use an output objective such as objective=kd.")
