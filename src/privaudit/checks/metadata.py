"""``metadata``: what the synthetic files' headers carry besides pixels.

A synthetic image can be pixel-perfectly new and still leak through its file: a DICOM header
copied from a training scan (names, IDs, dates, study UIDs), a PNG text chunk or EXIF field
written by a pipeline. For every synthetic file this check lists the privacy-relevant header
fields (:mod:`privaudit.data.metadata`), and compares their values with the values in the training
files' headers. It reports **field names and counts only**, never a value.

* ``identifying_field_rate``: share of synthetic files with at least one identifying field (a
  name, an ID, a date, a location, a device serial or free text) holding a value that is not a
  placeholder such as "ANONYMOUS".
* ``identifier_match_rate``: share of synthetic files with at least one header value (name, ID,
  instance UID, location, device or free text) equal to a value in a training file's header. A
  value that several training patients share (an institution name, a de-identification
  placeholder) identifies none of them: it is counted separately and does not enter the rate.

Image sets given as arrays have no files and no headers: the check is then not assessed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from privaudit.checks.base import (
    CHECKS,
    AuditContext,
    Check,
    CheckResult,
    CheckStatus,
    Direction,
    Metric,
    MetricSpec,
)
from privaudit.data.imageset import ImageSet
from privaudit.data.metadata import DEFAULT_PLACEHOLDERS, IDENTIFYING, FileHeaders, HeaderError, read_headers
from privaudit.errors import ConfigError
from privaudit.stats import clopper_pearson


@dataclass(frozen=True)
class MetadataOptions:
    """Options of the ``metadata`` check.

    Attributes:
        placeholders: header values that stand for "no value" (compared case-insensitively);
            a field holding only these is neither counted nor matched.
    """

    placeholders: tuple[str, ...] = DEFAULT_PLACEHOLDERS

    def __post_init__(self) -> None:
        if any(not isinstance(p, str) for p in self.placeholders):
            raise ConfigError("metadata.placeholders must be a list of text values")


@dataclass(frozen=True)
class FieldCount:
    """One header field across the synthetic files: where it is present and where it repeats training."""

    field: str
    category: str
    n_files: int
    n_matching_training: int


@dataclass(frozen=True, kw_only=True)
class MetadataResult(CheckResult):
    """Result of the ``metadata`` check (see the module docstring)."""

    n_synthetic_files: int
    n_read: int
    n_unreadable: int
    formats: dict[str, int]
    n_identifying: int
    n_matching_training: int
    n_shared_value_only: int
    n_training_files_read: int
    n_training_unreadable: int
    fields: tuple[FieldCount, ...]


@CHECKS.register("metadata")
class MetadataCheck(Check):
    """Lists identifying header fields of the synthetic files and the identifiers they share with training files."""

    name = "metadata"
    title = "Metadata in the synthetic files"
    Options = MetadataOptions
    metrics = {
        "identifier_match_rate": MetricSpec(
            "identifier_match_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic files whose headers repeat a name, ID, UID or text of a training "
            "file's headers (values shared by several training patients excluded)",
        ),
        "identifying_field_rate": MetricSpec(
            "identifying_field_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic files carrying an identifying header field (name, ID, date, "
            "location, device serial or free text) with a value that is not a placeholder",
        ),
    }

    def spaces(self, options: object, configured: tuple[str, ...]) -> tuple[str, ...]:
        """Reads files, not embeddings."""
        return ()

    def run(self, ctx: AuditContext, options: MetadataOptions) -> MetadataResult:
        """Read the headers of every synthetic and training file and count fields and matches."""
        synthetic = ctx.synthetic
        empty = dict(
            check=self.name,
            n_unreadable=0,
            formats={},
            n_identifying=0,
            n_matching_training=0,
            n_shared_value_only=0,
            n_training_files_read=0,
            n_training_unreadable=0,
            fields=(),
        )
        if synthetic.files is None:
            reason = (
                f"the synthetic images were given as {_kind(synthetic)}, not as files, so there are no "
                "headers to read; audit the files that will be released to check their metadata"
            )
            return MetadataResult(
                status=CheckStatus.NOT_ASSESSED,
                reason=reason,
                summary=f"Metadata was not assessed: {reason}.",
                metrics=_none(self, len(synthetic)),
                n_synthetic_files=0,
                n_read=0,
                **empty,
            )

        syn_headers, syn_bad = _read_all(synthetic.files, options)
        n_read = len(syn_headers)
        warnings: list[str] = []
        if syn_bad:
            warnings.append(
                f"the headers of {syn_bad} synthetic file(s) could not be read and were not assessed "
                "(they were decoded as images, so they changed or their headers are malformed)"
            )
        if n_read == 0:
            reason = f"none of the {syn_bad} synthetic files' headers could be read"
            return MetadataResult(
                status=CheckStatus.NOT_ASSESSED,
                reason=reason,
                summary=f"Metadata was not assessed: {reason}.",
                metrics=_none(self, 0),
                warnings=tuple(warnings),
                n_synthetic_files=len(synthetic.files),
                n_read=0,
                **{**empty, "n_unreadable": syn_bad},
            )

        # The training side: every value of every training header, and which patients hold it.
        train = ctx.train
        train_headers: list[tuple[FileHeaders, str | None]] = []
        train_bad = 0
        if train.files is not None:
            for i, path in enumerate(train.files):
                try:
                    headers = read_headers(path, placeholders=options.placeholders)
                except HeaderError:
                    train_bad += 1
                    continue
                patient = train.patient_ids[i] if train.patient_ids is not None else None
                if patient is None and headers.patient_key is not None:
                    patient = "header:" + headers.patient_key.hex()
                train_headers.append((headers, patient))
        holders: dict[bytes, set[str]] = defaultdict(set)
        known: set[bytes] = set()
        for headers, patient in train_headers:
            for field in headers.fields:
                for d in field.digests:
                    known.add(d)
                    if patient is not None:
                        holders[d].add(patient)
        shared = {d for d, patients in holders.items() if len(patients) > 1}
        if train.files is None:
            warnings.append(
                f"the training images were given as {_kind(train)}, not as files, so synthetic headers "
                "could not be compared with training headers (identifier_match_rate not assessed)"
            )
        elif train_bad:
            warnings.append(f"the headers of {train_bad} training file(s) could not be read; they were not compared")

        present: Counter[tuple[str, str]] = Counter()
        matching: Counter[str] = Counter()
        formats: Counter[str] = Counter()
        n_identifying = n_matching = n_shared_only = 0
        for headers in syn_headers:
            formats[headers.format] += 1
            file_matches = file_shared = False
            identifying = False
            for field in headers.fields:
                present[(field.name, field.category)] += 1
                identifying |= field.category in IDENTIFYING
                hits = [d for d in field.digests if d in known]
                if any(d not in shared for d in hits):
                    matching[field.name] += 1
                    file_matches = True
                elif hits:
                    file_shared = True
            n_identifying += identifying
            n_matching += file_matches
            n_shared_only += file_shared and not file_matches
        if n_shared_only:
            warnings.append(
                f"{n_shared_only} synthetic file(s) repeat header values that several training patients "
                "share (such as an institution name); these identify no single patient and are not "
                "counted as matches"
            )

        fields = tuple(
            sorted(
                (FieldCount(name, category, n, matching[name]) for (name, category), n in present.items()),
                key=lambda f: (-f.n_matching_training, -f.n_files, f.field),
            )
        )
        compared = train.files is not None and bool(train_headers)
        ident = _rate(n_identifying, n_read, syn_bad)
        match = _rate(n_matching, n_read, syn_bad) if compared else Metric(None, n_read + syn_bad)
        if syn_bad and (ident.value is None or (compared and match.value is None)):
            warnings.append(
                f"nothing was found in the {n_read} readable headers, but {syn_bad} unreadable one(s) could hold "
                "identifiers: the rates with no finding are not assessed (re-export or strip those files' headers "
                "and audit again)"
            )
        return MetadataResult(
            check=self.name,
            status=CheckStatus.ASSESSED,
            reason=None,
            summary=_summary(n_read, n_identifying, n_matching, fields, compared=match.value is not None),
            metrics={"identifier_match_rate": match, "identifying_field_rate": ident},
            warnings=tuple(warnings),
            n_synthetic_files=len(synthetic.files),
            n_read=n_read,
            n_unreadable=syn_bad,
            formats=dict(sorted(formats.items())),
            n_identifying=n_identifying,
            n_matching_training=n_matching,
            n_shared_value_only=n_shared_only,
            n_training_files_read=len(train_headers),
            n_training_unreadable=train_bad,
            fields=fields,
        )


def _read_all(files: tuple[str, ...], options: MetadataOptions) -> tuple[list[FileHeaders], int]:
    out, bad = [], 0
    for path in files:
        try:
            out.append(read_headers(path, placeholders=options.placeholders))
        except HeaderError:
            bad += 1
    return out, bad


def _rate(found: int, n_read: int, n_unreadable: int) -> Metric:
    """A share of synthetic files, over every file that will be released.

    Files whose header could not be read are neither cleared nor counted as findings: the
    estimate counts what was found over all files (a lower bound), and the interval runs from
    the lower end for ``found`` to the upper end for ``found`` plus every unreadable file. With
    nothing found and some headers unreadable the rate is not assessed: a pass would rest on
    files that were never read.
    """
    n = n_read + n_unreadable
    if n_unreadable and found == 0:
        return Metric(None, n)
    lo, _ = clopper_pearson(found, n)
    _, hi = clopper_pearson(found + n_unreadable, n)
    return Metric(found / n, n, lo, hi)


def _kind(images: ImageSet) -> str:
    return "an array file" if images.kind == "array" else "arrays in memory"


def _none(check: Check, n: int) -> dict[str, Metric]:
    return {name: Metric(None, n, direction=spec.direction) for name, spec in check.metrics.items()}


def _summary(n: int, n_identifying: int, n_matching: int, fields: tuple[FieldCount, ...], *, compared: bool) -> str:
    files = f"{n} synthetic file{'s' * (n != 1)}"
    if n_identifying == 0 and n_matching == 0:
        text = f"None of the {files} carries an identifying header field"
        return text + (", and none repeats a training file's header value." if compared else ".")
    parts = []
    if n_matching:
        named = ", ".join(f"{f.field} ({f.n_matching_training})" for f in fields if f.n_matching_training)[:300]
        parts.append(f"{n_matching} of the {files} {_verb('repeat', n_matching)} a header value of a training file: {named}.")
    elif compared:
        parts.append("No synthetic file repeats a training file's header value.")
    if n_identifying:
        top = [f for f in fields if f.category in IDENTIFYING][:5]
        named = ", ".join(f"{f.field} ({f.n_files})" for f in top)
        parts.append(f"{n_identifying} of the {files} {_verb('carry', n_identifying)} identifying header fields, such as {named}.")
    return " ".join(parts)


def _verb(verb: str, n: int) -> str:
    if n != 1:
        return verb
    return verb[:-1] + "ies" if verb.endswith("y") else verb + "s"
