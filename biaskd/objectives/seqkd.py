"""``seqkd``: sequence-level KD for the LM setup (Kim & Rush 2016, "Sequence-level knowledge
distillation"). The student is not matched to the teacher's outputs batch by batch: it is
trained with plain next-token cross-entropy on sequences the teacher *generates* from the
training prefixes. Generation, selection and the α mix are in :mod:`biaskd.modules.seqkd`;
this class only names the objective and validates its options.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from biaskd.errors import ConfigError
from biaskd.objectives.base import Objective, Outputs

PROMPTS = ("verb", "tokens")
MIXES = ("teacher", "interpolate")
VERBS = ("candidates", "free")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class SequenceLevelKD(Objective):
    """Options (``distill.seqkd.*``):

    - ``beam_width`` (int ≥ 1, default 5, Kim & Rush's beam): 1 = greedy decoding;
    - ``prompt``: ``verb`` (default) keeps every token before the verb (``verb_pos``), so the
      teacher chooses the verb / number token and writes the rest of the sentence; ``tokens``
      keeps the first ``prompt_tokens`` tokens (at most length − 1), so the teacher also writes
      the subject and what stands between it and the verb;
    - ``prompt_tokens`` (int ≥ 1, default 2): the prompt length for ``prompt=tokens``;
    - ``verb``: ``candidates`` (default) lets the teacher write only the sentence's two verb forms
      at its verb position, so each generated sentence carries the teacher's number decision;
      ``free``: any token there;
    - ``mix``: ``teacher`` (default, Seq-KD) trains on the teacher's best beam sequence;
      ``interpolate`` (Seq-Inter) on the beam candidate closest to the gold sentence (smoothed
      sentence BLEU), which needs ``beam_width`` ≥ 2.
    """

    name = "seqkd"
    #: the student's training sequences come from the teacher (the driver builds them once)
    sequence_level = True
    #: generation needs a language model: the LM setup only
    lm_only = True
    options = {"beam_width": None, "prompt": PROMPTS, "prompt_tokens": None, "verb": VERBS, "mix": MIXES}

    def __init__(self, beam_width: int = 5, prompt: str = "verb", prompt_tokens: int = 2,
                 verb: str = "candidates", mix: str = "teacher") -> None:
        super().__init__()
        self.check_options({"beam_width": beam_width, "prompt": prompt, "prompt_tokens": prompt_tokens, "verb": verb,
                            "mix": mix}, f"distill.{self.name}")
        self.beam_width = beam_width
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.verb = verb
        self.mix = mix

    @classmethod
    def check_options(cls, options: Mapping[str, Any], prefix: str) -> None:
        super().check_options(options, prefix)
        for key in ("beam_width", "prompt_tokens"):
            if key in options and not _positive_int(options[key]):
                raise ConfigError(f"config key '{prefix}.{key}' must be an integer >= 1, got {options[key]!r}")
        width = options.get("beam_width", 5)
        if options.get("mix", "teacher") == "interpolate" and width < 2:
            raise ConfigError(
                f"config key '{prefix}.beam_width' must be >= 2 for mix=interpolate: it picks the candidate "
                f"closest to the gold sentence among the teacher's beam (width 1 = mix=teacher); got {width}"
            )

    @classmethod
    def from_config(cls, distill: Mapping[str, Any], student_dim: int | None,
                    teacher_dim: int | None) -> "SequenceLevelKD":
        # only the classification path builds objectives into a loss; the LM setup never does
        raise ConfigError(not_lm_message())

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        raise ConfigError(not_lm_message())


def not_lm_message(setup: str = "classification") -> str:
    return (f"distill.objective=seqkd is sequence-level KD (Kim & Rush 2016): the student trains on sentences "
            f"the teacher generates, which needs the LM setup (task.setup=lm) with causal models; got "
            f"task setup {setup!r}. For classification use an output objective such as distill=cross.")
