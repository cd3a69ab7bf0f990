"""How a job de-duplicates (``curation.dedup``): the validated spec section.

dedup:
  exact_inputs: true          # identical prompts (normalised) / image bytes: only the first is processed
  near_duplicates: true       # after the units: near-duplicates across the job and its earlier runs
  threshold: 0.95             # cosine of CLIP image embeddings (text_threshold: of text embeddings)
  keep: clip_score            # in each group the record scoring highest stays (ties: the smaller key)
  references:                 # decontamination: records within a reference's threshold are rejected
    - {name: coco-val2017, uri: s3://evals/coco-val2017/embeddings}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from pipelines.dedup.defaults import IMAGE_THRESHOLD, TEXT_THRESHOLD
from pipelines.spec_fields import Location, Strict

if TYPE_CHECKING:
    from pipelines.dedup.references import ReferenceSpec

REFERENCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # as ``references.NAME_PATTERN``


class ReferenceEntry(Strict):
    """A reference embedding set: a clip-retrieval embeddings folder (``img_emb/`` + ``metadata/``, as this
    project's outputs write it) or a parquet of embeddings, local or any fsspec URI."""

    name: str = Field(
        pattern=REFERENCE_NAME, description="shown in reasons: 'near-duplicate of reference NAME:ID'"
    )
    uri: Location = Field(description="the embeddings folder or parquet file(s)")
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="cosine (default: dedup.threshold)")
    embeddings: Literal["img_emb", "text_emb"] = Field("img_emb", description="clip-retrieval folder to read")
    id_column: str | None = Field(None, description="metadata column naming each vector (default: key, ...)")
    embedding_column: str | None = Field(None, description="parquet layout: the embedding column")

    def spec(self, threshold: float) -> ReferenceSpec:
        """The dedup core's reference spec (``threshold``: the job's, when the entry sets none)."""
        from pipelines.dedup.references import ReferenceSpec

        return ReferenceSpec(
            name=self.name,
            uri=self.uri,
            threshold=self.threshold if self.threshold is not None else threshold,
            embeddings=self.embeddings,
            id_column=self.id_column,
            embedding_column=self.embedding_column,
        )


class DedupSpec(Strict):
    """Exact input duplicates, near-duplicates across the job and its runs, and reference sets."""

    exact_inputs: bool = Field(
        False,
        description="reject inputs identical to an earlier one in the plan's order (prompts after Unicode NFC, "
        "whitespace and case normalisation; images by the sha256 of their bytes) before any model work; "
        "planning then reads every input once",
    )
    near_duplicates: bool = Field(
        False,
        description="after the units are committed, reject records whose CLIP embedding is within threshold "
        "of a better one of the job (earlier runs' records included); needs the parquet format",
    )
    threshold: float = Field(IMAGE_THRESHOLD, gt=0.0, le=1.0, description="cosine of CLIP image embeddings")
    text_threshold: float = Field(
        TEXT_THRESHOLD, gt=0.0, le=1.0, description="cosine of CLIP text embeddings (text-only modes)"
    )
    max_hamming: int | None = Field(
        None, ge=0, le=64, description="also require pHashes within this many bits (copies of one picture)"
    )
    keep: str = Field("clip_score", description="score column deciding which record of a group stays")
    references: list[ReferenceEntry] = Field(default_factory=list, description="reference embedding sets")

    @model_validator(mode="after")
    def _unique_references(self) -> DedupSpec:
        names = [r.name for r in self.references]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"dedup.references: the name {', '.join(map(repr, repeated))} is used twice")
        return self

    @property
    def phase(self) -> bool:
        """Whether the job runs the dedup phase after its units."""
        return self.near_duplicates or bool(self.references)
