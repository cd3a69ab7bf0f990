"""Stage 2, the actor pool: one UniDiffuser engine per actor, loaded once, fed one unit (block) per call.

The engine micro-batches inside the unit (``resources.batch_size``); per-record engine errors become error
rows with their reason. Every row leaves with its generated image and caption (what the mode makes) and the
text paired with its image.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import records as r
from pipelines.config import PipelineConfig
from pipelines.pixels import from_bytes, to_bytes
from unidiffuser.config import EngineConfig, Mode, ModeInput
from unidiffuser.results import Result

if TYPE_CHECKING:
    from unidiffuser.engine import UniDiffuserEngine

log = logging.getLogger(__name__)


class GenerateStage:
    """Callable class for ``Dataset.map_batches``: runs the configured mode on the unit's ok rows."""

    def __init__(self, config: PipelineConfig, checkpoint_identity: str | None = None):
        """``checkpoint_identity`` pins the checkpoint version the job was planned with."""
        self.config = config
        self.mode = config.model.mode
        self.params = json.dumps(
            {
                k: v
                for k, v in config.model.model_dump(mode="json").items()
                if k not in ("checkpoint", "model_id")
            },
            sort_keys=True,
        )
        self.engine = self.load_engine(checkpoint_identity)

    def load_engine(self, checkpoint_identity: str | None) -> UniDiffuserEngine:
        """The job's engine on its device, at the checkpoint version the job was planned with (the one
        place a stage loads a model: a subclass that makes its records otherwise overrides this)."""
        # torch and the engine (diffusers, transformers) load in the actor: the driver that plans the job
        # imports this class, never the model
        import torch

        from unidiffuser.engine import UniDiffuserEngine

        config = self.config
        if config.device == "cpu":
            torch.set_num_threads(config.resources.engine_threads)  # a CPU record's output depends on it
        engine_config = EngineConfig.build(
            **config.model.sampling_values(), device=config.device, batch_size=config.resources.batch_size
        )
        return UniDiffuserEngine.from_pretrained(
            config.model.checkpoint,
            engine_config,
            storage_options=config.storage.storage_options(),
            identity=checkpoint_identity,
        )

    def _results(self, rows: pd.DataFrame) -> list[Result]:
        seeds = rows[r.SEED].tolist()
        inputs: list | None = None
        if self.mode.input == ModeInput.TEXT:
            inputs = rows[r.PROMPT].tolist()
        elif self.mode.input == ModeInput.IMAGE:
            inputs = [from_bytes(p) for p in rows[r.PIXELS]]
        return self.engine.run(inputs, seeds, mode=self.mode)

    def _results_or_errors(self, rows: pd.DataFrame) -> list[Result]:
        """The engine isolates per-record failures itself; anything it lets through fails only this unit's
        records (as error rows with the reason), never the job."""
        try:
            return self._results(rows)
        except Exception as exc:  # deliberately broad: every input must be accounted for
            log.exception("engine failed on a unit of %d records", len(rows))
            return [Result.failed(f"{type(exc).__name__}: {exc}") for _ in range(len(rows))]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        n = len(out)
        out[r.MODE] = self.mode.value
        out[r.MODEL_ID] = self.config.model_id
        out[r.PARAMS] = self.params
        captions: list[str | None] = [None] * n
        used: list[str | None] = [None] * n
        images: list[bytes | None] = [None] * n
        status = out[r.STATUS].tolist()
        reasons = [None if r.missing(x) else x for x in out[r.REASON]]
        flags = [list(f) for f in out[r.FLAGS]]
        todo = [i for i in range(n) if status[i] == r.Status.OK.value]
        if todo:
            for i, result in zip(todo, self._results_or_errors(out.iloc[todo]), strict=True):
                if not result.ok:
                    status[i], reasons[i] = r.Status.ERROR.value, f"engine: {result.error}"
                    continue
                captions[i], used[i] = result.text, result.prompt_used
                if result.image is not None:
                    images[i] = to_bytes(result.image)
                flags[i] = flags[i] + [f for f in result.flags if f not in flags[i]]
        out[r.GENERATED_CAPTION] = captions
        out[r.PROMPT_USED] = used
        out[r.OUT_PIXELS] = images
        prompts = [None if r.missing(p) else p for p in out[r.PROMPT]]
        out[r.TEXT] = [_paired_text(self.mode, p, c) for p, c in zip(prompts, captions, strict=True)]
        out[r.STATUS], out[r.REASON], out[r.FLAGS] = status, reasons, flags
        return out


def _paired_text(mode: Mode, prompt: str | None, caption: str | None) -> str | None:
    """The text that goes with the record's image in the shards: the prompt for t2i, the input's own
    caption (if the source had one) for i2t2i, else the generated caption."""
    return prompt if mode in (Mode.T2I, Mode.I2T2I) else caption
