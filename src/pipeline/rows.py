"""The rows the pipeline writes, defined once: the JSONL records of each stage and the per-sample CSV columns.

    GenerationRow  generate/generations.jsonl, one per question (made by stage=generate and stage=import)
    VerdictRow     judge/<judge>/verdicts.jsonl, one per answer
    SampleRow      judge/<judge>/samples.csv, one per answer: the answer, its lexical criteria and the verdict

Every record carries its schema version ("generation/2"); a reader accepts the versions in `READS` and refuses any
other, naming the file and line. A change to a row's fields is a new version, and the reader of the old one says
how the old records map onto the new fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, Iterable, Optional, TypeVar

from .errors import PipelineError, plural, preview

R = TypeVar("R", bound="Row")


def answer_sha256(question: str, references: list[str], prediction: str) -> str:
    """The sha256 of what a verdict or a label judged: the question, the references and the prediction, as one
    canonical JSON text. A verdict or label stores it, and every reader compares it with the run's answer of the
    same id, so an answer regenerated or edited since is never paired with a verdict given to another."""
    text = json.dumps([question, list(references), prediction], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Row:
    """A JSONL record with a schema version. Subclasses are dataclasses."""

    SCHEMA: ClassVar[str]
    READS: ClassVar[tuple[str, ...]]

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, **asdict(self)}

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def required(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]

    @classmethod
    def from_json(cls: type[R], record: dict, where: str = "") -> R:
        """The row a record holds; a PipelineError naming `where` for an unknown version or missing fields."""
        version = record.get("schema")
        if version not in cls.READS:
            raise PipelineError(f"{where}: a record with schema {version!r}, which this version cannot read (it "
                                f"reads {', '.join(cls.READS)}); use the version that wrote it, or redo the stage.")
        missing = [name for name in cls.required() if name not in record]
        if missing:
            raise PipelineError(f"{where}: a {version} record (id {record.get('id')!r}) lacks "
                                f"{', '.join(missing)}; the file was edited or written by another tool.")
        return cls(**{name: record[name] for name in cls.names() if name in record})


@dataclass(frozen=True)
class GenerationRow(Row):
    """One answer to one question. The token fields are None for imported answers (no log-probabilities).

    Version 2 added `human_label` to every record (version 1 had it only on imported ones; a missing label reads as
    None, so version 1 files are read unchanged). Version 3 added `meta`, the user's own columns (dataset.fields.keep,
    import_fields.keep); older records read with None."""

    SCHEMA: ClassVar[str] = "generation/3"
    READS: ClassVar[tuple[str, ...]] = ("generation/1", "generation/2", "generation/3")

    id: str
    index: int  # position in the data set (the import file)
    question: str
    references: list[str]
    prompt: Optional[str]  # what the generator read, exactly (None for imported answers)
    prediction: str
    finish_reason: Optional[str]  # "eos" | "newline" | "length"; None for imported answers
    num_generated_tokens: Optional[int]
    token_ids: Optional[list[int]]
    tokens: Optional[list[str]]
    token_logprobs: Optional[list[float]]
    sequence_nll: Optional[float]
    mean_nll: Optional[float]
    human_label: Optional[bool] = None
    meta: Optional[dict] = None  # {column: value} of the columns kept with the question; None: none kept

    @property
    def answer_sha256(self) -> str:
        """The hash a verdict or label of this answer records (see `answer_sha256`)."""
        return answer_sha256(self.question, self.references, self.prediction)

    @classmethod
    def answer(cls, id: str, question: str, references: list[str], prediction: str, index: int = 0,
               human_label: Optional[bool] = None, meta: Optional[dict] = None) -> "GenerationRow":
        """An answer made elsewhere (imported): no prompt, no tokens, no log-probabilities."""
        return cls(id=id, index=index, question=question, references=list(references), prompt=None,
                   prediction=prediction, finish_reason=None, num_generated_tokens=None, token_ids=None, tokens=None,
                   token_logprobs=None, sequence_nll=None, mean_nll=None, human_label=human_label, meta=meta or None)


@dataclass(frozen=True)
class VerdictRow(Row):
    """One judge's verdict on one answer. Version 2 added `answer_sha256` (version 1 records read with None)."""

    SCHEMA: ClassVar[str] = "verdict/2"
    READS: ClassVar[tuple[str, ...]] = ("verdict/1", "verdict/2")

    id: str
    judge: str
    mode: str  # "logprob" | "generate" | "external" (stage=import) | "jury" (stage=jury)
    prompt_name: str
    prompt_version: int
    verdict: str  # "correct" | "incorrect" | "invalid"
    invalid_reason: Optional[str]
    p_correct: Optional[float]  # logprob mode: P(correct) among the verdict words; None in generate mode
    verdict_mass: Optional[float]  # logprob mode: the probability the verdict words had in all
    reply: str  # what the judge wrote (logprob mode: the verdict word P(correct) decided, and P(correct))
    finish_reason: Optional[str]  # generate mode: why the reply ended
    # sha256 of the question, references and prediction judged (rows.answer_sha256); None in verdict/1 records,
    # which predate it. Readers refuse a verdict whose answer changed since (binding.py).
    answer_sha256: Optional[str] = None


@dataclass(frozen=True)
class LabelRow(Row):
    """One human correctness label attached to a run by stage=label (runs/<run_id>/labels/labels.jsonl).

    Version 2 added `answer_sha256`, the hash of the answer the labeller saw (`answer_sha256`), so that a label is
    never paired with an answer regenerated or edited since. Version 1 records read with None there: they cannot
    be checked, and the report says so."""

    SCHEMA: ClassVar[str] = "label/2"
    READS: ClassVar[tuple[str, ...]] = ("label/1", "label/2")

    id: str
    human_label: bool
    sheet: str  # the file the label was read from (its name)
    sheet_sha256: str
    line: int  # its line in that file (1 is the header)
    answer_sha256: Optional[str] = None  # what was labelled: question, references, prediction (None in label/1)

    def to_json(self) -> dict[str, Any]:
        """A label that records no answer (read from a label/1 record) is written back as the label/1 it was."""
        record = super().to_json()
        if self.answer_sha256 is None:
            del record["answer_sha256"]
            record["schema"] = "label/1"
        return record


# The records file of each stage and the row type it holds.
ROW_TYPES: dict[str, type[Row]] = {"generations.jsonl": GenerationRow, "verdicts.jsonl": VerdictRow,
                                   "labels.jsonl": LabelRow}


def check_versions(records: list[dict], where: object, records_name: str) -> None:
    """Refuse records whose schema version the file's row type cannot read, naming their lines."""
    row_type = ROW_TYPES.get(records_name)
    if row_type is None:
        return
    bad = [(i, r.get("schema")) for i, r in enumerate(records, 1) if r.get("schema") not in row_type.READS]
    if bad:
        shown = preview([f"line {i}: {v!r}" for i, v in bad], 3)
        raise PipelineError(
            f"{where}: {plural(len(bad), 'record')} with a schema this version cannot read ({shown}); it reads "
            f"{', '.join(row_type.READS)}. The file was written by another version or tool: use that version, or "
            "redo the stage with overwrite=true."
        )


def parse_rows(row_type: type[R], records: Iterable[dict], where: object) -> list[R]:
    return [row_type.from_json(r, f"{where}, line {i}") for i, r in enumerate(records, 1)]


@dataclass(frozen=True)
class SampleRow:
    """One line of samples.csv: which run, data set and generator, the answer (from its GenerationRow), the lexical
    criteria, the human label and the judge's verdict (from its VerdictRow, as judge_<field>). The CSV's columns are
    this class's fields, in order, then the user's kept columns (GenerationRow.meta) under their own names."""

    run_id: str
    dataset: str
    generator: str
    id: str
    question: str
    references: str  # the JSON list, so that the cell reads back exactly
    prediction: str
    finish_reason: Optional[str]
    num_generated_tokens: Optional[int]
    sequence_nll: Optional[float]
    mean_nll: Optional[float]
    exact_match: int
    token_f1: float
    contains_reference: int
    rouge_l: float
    human_label: Optional[int]
    judge: str
    judge_verdict: str
    judge_p_correct: Optional[float]
    judge_invalid_reason: Optional[str]
    judge_reply: str

    @classmethod
    def of(cls, run: tuple[str, str, str], answer: GenerationRow, verdict: VerdictRow, scores: dict[str, float]
           ) -> "SampleRow":
        """`run`: (run_id, data set name, generator name); `scores`: exact_match, token_f1, contains_reference,
        rouge_l of the prediction."""
        return cls(
            run_id=run[0], dataset=run[1], generator=run[2], id=answer.id, question=answer.question,
            references=json.dumps(answer.references, ensure_ascii=False),
            prediction=answer.prediction, finish_reason=answer.finish_reason,
            num_generated_tokens=answer.num_generated_tokens, sequence_nll=answer.sequence_nll,
            mean_nll=answer.mean_nll, exact_match=int(scores["exact_match"]), token_f1=round(scores["token_f1"], 6),
            contains_reference=int(scores["contains_reference"]), rouge_l=round(scores["rouge_l"], 6),
            human_label=None if answer.human_label is None else int(answer.human_label),
            judge=verdict.judge, judge_verdict=verdict.verdict, judge_p_correct=verdict.p_correct,
            judge_invalid_reason=verdict.invalid_reason, judge_reply=verdict.reply,
        )


SAMPLE_COLUMNS = [f.name for f in fields(SampleRow)]
