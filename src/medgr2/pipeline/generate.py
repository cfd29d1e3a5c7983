"""``stage=generate`` (the generator G_θ, Algorithm 1 line 3) and ``stage=distill`` (the self-updating
generator, Algorithm 1 line 14).

* ``generate``: sources = a split of the configured benchmark (SynthMed by default, with ground-truth
  rationales), backend = the ``generator`` group, prompt strategy = the ``prompt`` group. Output goes to
  ``stage.out_dir`` or a cache folder keyed by everything that changes the candidates, so a rerun of the
  same command resumes (no request is redone) and sweep jobs with the same generation settings share one
  pool. When complete, the candidates are also exported as a ``datasets`` folder for ``stage=score``.
* ``distill``: :func:`distill_generator` fine-tunes the local VLM on selected (high-reward) candidates with
  the SFT module — item = the generator prompt for the candidate's image/type/modality, target = the
  candidate's JSON — and exports it for ``generator=hf generator.weights=<export>``. One training loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medgr2.configs.stages import GenerateConfig
from medgr2.configs.training import DistillConfig
from medgr2.pipeline.common import cache_dir, fingerprint, load_split, output_dir, to_dict
from medgr2.pipeline.stage import Artifact, fit_and_export
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_write_json

log = logging.getLogger(__name__)

# Config keys that would hold a credential: "api_key", "key", "hf_token", "password", ... — but not
# "api_key_env" (the variable's NAME) nor "max_new_tokens".
_CREDENTIAL_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)

EXPORT_META = "export_meta.json"
GENERATOR_META = "generator_meta.json"
#: ``generator.*`` keys read by the stage, not by the backend: whether to resend requests that failed for
#: good, and the per-million-token prices of the cost estimate.
RUN_KEYS = ("retry_failed", "price_per_million")


# ============================================================================================ generate


def _check_no_secret_values(gcfg: Mapping[str, Any]) -> None:
    """Refuse a key written into the generator config (``+generator.api_key=...``): keys come from the
    environment (``api_key_env`` names the variable) so they never reach saved configs or MLflow."""
    for key, value in gcfg.items():
        if _CREDENTIAL_KEY.search(str(key)) and value not in (None, ""):
            raise ValueError(
                f"generator.{key} is set in the config: never put credentials in a config or on the command "
                "line. Export the key in the environment variable named by generator.api_key_env instead."
            )


def _weights_stamp(path: str | Path) -> str:
    """Identify a weights folder by its files' sizes and mtimes (cheap; changes when it is re-exported)."""
    folder = Path(path)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    blob = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def make_generator(cfg: DictConfig):
    """The backend of the ``generator`` group (``hf`` loads ``model`` through the model factory)."""
    from medgr2.generation import make_backend

    g = dict(to_dict(cfg.generator))
    _check_no_secret_values(g)
    for key in RUN_KEYS:
        g.pop(key, None)
    name = str(g.pop("name"))
    if name != "hf":
        return make_backend(name, **g)
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import load_vlm
    from medgr2.pipeline.pretrain import base_weights

    weights = g.pop("weights", None) or base_weights(cfg)
    # No LoRA wrapper for generation: a distilled generator is exported with its adapters merged.
    model, processor = load_vlm(to_dict(cfg.model), weights=weights, corpus_fn=tokenizer_corpus, lora=False)
    model.eval()
    if weights:
        label = f"{Path(weights).resolve()}#{_weights_stamp(weights)}"  # provenance + resume identity
    else:
        label = str(cfg.model.get("path") or cfg.model.name)
    return make_backend("hf", model=model, processor=processor, model_name=label, **g)


def generation_sources(cfg: DictConfig) -> datasets.Dataset:
    """The generator's source records: ``stage.source_split`` of the configured data, ``stage.n_sources``
    of them, images left encoded (``{"bytes", "path"}``) so candidates carry the very same image bytes —
    no decode/re-encode per request, and dedupe keys match across D_gen and new pools."""
    s = GenerateConfig.from_node(to_dict(cfg.stage))
    n, offset, where = s.n_sources, s.source_offset, dict(s.where or {})
    if where or offset:
        ds = filter_rows(load_split(cfg, str(s.source_split)), where)
        end = len(ds) if n is None else min(len(ds), offset + int(n))
        ds = ds.select(range(min(offset, end), end))
    else:
        ds = load_split(cfg, str(s.source_split), limit=int(n) if n is not None else None)
    if len(ds) == 0:
        raise ValueError(f"no source records in split {s.source_split!r} (source_offset={offset}, where={where})")
    return ds.cast_column("image", datasets.Image(decode=False))


def filter_rows(ds: datasets.Dataset, where: Mapping[str, Any] | None) -> datasets.Dataset:
    """Rows of ``ds`` whose column values are among ``where[column]`` (a value or a list of them)."""
    for column, allowed in (where or {}).items():
        if column not in ds.column_names:
            raise ValueError(f"cannot filter on {column!r}: the data has columns {ds.column_names}")
        values = {str(v) for v in (allowed if isinstance(allowed, list | tuple) else [allowed])}
        ds = ds.filter(lambda col, values=values: [str(v) in values for v in col], input_columns=column,
                       batched=True)
    return ds


def default_candidates_dir(cfg: DictConfig, sources: datasets.Dataset, backend: Any) -> Path:
    """``<cache>/candidates/cand-<key>``: keyed by what changes the candidates (sources, generation plan,
    prompt, backend fingerprint) — not by operational knobs (concurrency, spend cap, progress bar)."""
    from medgr2.generation import get_prompt
    from medgr2.generation._util import stable_hash

    s = cfg.stage
    fp = getattr(backend, "fingerprint", None)
    key = fingerprint(
        "candidates-v1",
        str(cfg.data.name),
        stable_hash([str(i) for i in sources["id"]]),
        {k: to_dict(s.get(k)) for k in ("samples_per_source", "iteration", "seed", "shard_size", "question_types")},
        get_prompt(str(cfg.prompt.name)).version,
        fp() if callable(fp) else {"name": backend.name, "model": str(backend.model)},
    )
    return cache_dir(cfg) / "candidates" / f"cand-{key}"


def output_path(cfg: DictConfig) -> Path:
    """Where ``stage=generate`` with ``cfg.stage`` generates: ``stage.out_dir``, else
    :func:`default_candidates_dir` (which builds the backend to read its fingerprint)."""
    s = cfg.stage
    if s.get("out_dir"):
        return Path(s.out_dir)
    return default_candidates_dir(cfg, generation_sources(cfg), make_generator(cfg))


def export_path(out_dir: Path) -> Path:
    """The exported candidates (a ``datasets`` folder) of the generation folder ``out_dir``."""
    # Not directly under out_dir: the store's cleanup removes `.*.tmp-*` leftovers there.
    return Path(out_dir) / "export" / "candidates"


def export_candidates(out_dir: Path, force: bool = False) -> Path:
    """Save the kept candidates of a generation ``out_dir`` as a ``datasets`` folder
    (``<out_dir>/export/candidates``, what ``stage=score stage.input=`` loads), streaming the shards.
    Skipped when an export of exactly the current shards exists."""
    from medgr2.data.rows import save_rows
    from medgr2.generation.store import read_manifest

    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no generation in {out_dir}")
    stamp = {
        "fingerprint": manifest["fingerprint"],
        "shards": {k: e["file"] for k, e in sorted(manifest["shards"].items())},
    }
    export = Artifact(export_path(out_dir), stamp, EXPORT_META, legacy_key="stamp")
    n = sum(e["kept"] for e in manifest["shards"].values())

    def build(tmp: Path) -> dict[str, Any]:
        save_rows(out_dir, tmp)
        return {"rows": n, "source": str(out_dir)}

    export.get_or_build(build, rebuild=force)
    return export.path


def cost_estimate(usage: Mapping[str, Any], prices: Mapping[str, Any] | None) -> float | None:
    """US$ for ``usage`` tokens at ``prices`` (``{input, output}`` per million tokens; thought tokens are
    billed as output), or None when no prices are configured."""
    if not prices or prices.get("input") is None or prices.get("output") is None:
        return None
    out_tokens = float(usage.get("candidates", 0)) + float(usage.get("thoughts", 0))
    return (float(usage.get("prompt", 0)) * float(prices["input"]) + out_tokens * float(prices["output"])) / 1e6


def summary_metrics(summary: Mapping[str, Any], prefix: str = "generate") -> dict[str, float]:
    """A ``GenerationSummary.to_dict()`` as flat MLflow metrics: counts by reason / error kind / defect,
    rejects per modality × reason (``generate/rejects/<modality>/<reason>``) and this run's tokens."""
    m: dict[str, float] = {
        f"{prefix}/{k}": float(summary[k])
        for k in ("requested", "attempted", "kept", "pending", "shards", "shards_written", "shards_skipped",
                  "elapsed_s")
    }
    m[f"{prefix}/complete"] = float(bool(summary["complete"]))
    m[f"{prefix}/api_calls"] = float(summary.get("api_calls", 0))
    for group in ("rejected", "failed", "api_errors"):
        m[f"{prefix}/{group}"] = float(sum(summary.get(group, {}).values()))
    for group in ("rejected", "failed", "api_errors", "kept_defects"):
        for reason, count in summary.get(group, {}).items():
            m[f"{prefix}/{group}/{reason}"] = float(count)
    for modality, counts in (summary.get("rejects_by_modality") or {}).items():
        for reason, count in counts.items():
            m[f"{prefix}/rejects/{modality}/{reason}"] = float(count)
        n = (summary.get("requested_by_modality") or {}).get(modality)
        if n:
            m[f"{prefix}/reject_share/{modality}"] = sum(counts.values()) / float(n)
    for kind, count in (summary.get("usage") or {}).items():
        m[f"{prefix}/tokens/{kind}"] = float(count)
    if summary.get("cost_usd") is not None:
        m[f"{prefix}/cost_usd"] = float(summary["cost_usd"])
    return m


def run_generate(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """Generate (or resume generating) candidates; log the summary as metrics and a JSON artifact."""
    return generate_candidates(cfg, tracker)[0]


def generate_candidates(cfg: DictConfig, tracker: Tracker) -> tuple[dict[str, float], Path, Path | None]:
    """:func:`run_generate`'s work; returns (metrics, generation folder, exported candidates or None)."""
    from medgr2.generation import get_prompt, run_generation

    s = GenerateConfig.from_node(to_dict(cfg.stage))  # unknown keys and bad values fail here, before any work
    strategy = get_prompt(str(cfg.prompt.name)).name
    sources = generation_sources(cfg)
    backend = make_generator(cfg)
    out = Path(s.out_dir) if s.out_dir else default_candidates_dir(cfg, sources, backend)
    log.info("generating with %r, prompt=%s, %d sources -> %s", backend, strategy, len(sources), out)
    summary = run_generation(
        sources,
        backend,
        strategy,
        out,
        samples_per_source=s.samples_per_source,
        iteration=s.iteration,
        seed=s.seed,
        shard_size=s.shard_size,
        question_types=list(s.question_types) if s.question_types else None,
        progress=s.progress,
        retry_failed=bool(cfg.generator.get("retry_failed", False)),
    )
    info = summary.to_dict()
    info["cost_usd"] = cost_estimate(summary.usage, to_dict(cfg.generator.get("price_per_million")))
    export = None
    if s.export and (summary.complete or s.export_partial):
        export = export_candidates(out)
        info["export"] = str(export)
    metrics = summary_metrics(info)
    tracker.log_metrics(metrics)
    tags = {"generate.out_dir": str(out), "generate.backend": backend.name, "generate.prompt": strategy}
    if export is not None:
        tags["generate.export"] = str(export)
    tracker.set_tags(tags)
    report = output_dir(cfg) / "generation_summary.json"
    atomic_write_json(report, info)
    tracker.log_artifact(report)
    if summary.rejects_by_modality:
        tracker.log_artifact(Path(summary.rejects_file))
    rejected, failed = sum(summary.rejected.values()), sum(summary.failed.values())
    print(f"generated into {out}: kept {summary.kept}, rejected {rejected} {dict(summary.rejected)}, "
          f"failed for good {failed} {dict(summary.failed)}, api errors {dict(summary.api_errors)}, "
          f"pending {summary.pending}, {summary.elapsed_s:.1f}s")
    if summary.usage:
        u = summary.usage
        cost = "" if info["cost_usd"] is None else f", estimated cost ${info['cost_usd']:.4f}"
        print(f"tokens this run: prompt {u['prompt']}, candidates {u['candidates']}, thoughts {u['thoughts']} "
              f"in {summary.api_calls} API call(s){cost}")
    if failed:
        print(f"{failed} request(s) failed for good and are excluded; a rerun does not resend them "
              "(add generator.retry_failed=true to resend)")
    if export is not None:
        print(f"candidates dataset: {export}\n  score it: python train.py stage=score stage.input={export}\n"
              f"  then:     python train.py stage=select stage.score.input={export} select=topk k=...")
    elif not summary.complete:
        print("incomplete: rerun the same command to retry the pending requests")
    return metrics, out, export


# ============================================================================================ distill

def distill_config(cfg: DictConfig) -> DistillConfig:
    """The typed settings of ``stage=distill`` (or the loop's ``stage.distill_settings`` made the stage); the
    prompt strategy defaults to the run's ``prompt`` group."""
    d = DistillConfig.from_node(to_dict(cfg.stage))
    return dataclasses.replace(d, strategy=d.strategy or str(cfg.prompt.name))


def generator_item(rec: Mapping[str, Any], strategy: str) -> dict[str, Any]:
    """A candidate as a chat item: the prompt the generator would get for this image, question type and
    option count; the target is the JSON object it should answer with (the fields validation reads)."""
    from medgr2.data.schema import MAX_OPTIONS, MIN_OPTIONS
    from medgr2.generation import get_prompt
    from medgr2.generation.prompts import RESPONSE_FIELDS

    template = get_prompt(strategy)
    options = list(rec["options"])
    n = len(options) if MIN_OPTIONS <= len(options) <= MAX_OPTIONS else None
    prompt = template.render(question_type=str(rec["question_type"]), modality=str(rec["modality"]), n_options=n)
    # Same key order as the structured-output schema asks for (reflection, when used, is optional).
    order = [k for k in template.response_schema().get("propertyOrdering", RESPONSE_FIELDS) if k in RESPONSE_FIELDS]
    obj = {"question_type": rec["question_type"], "question": rec["question"], "options": options,
           "rationale": rec["rationale"], "answer": rec["answer"]}
    return {"image": rec["image"], "prompt": prompt, "prefix": "",
            "target": json.dumps({k: obj[k] for k in order}, ensure_ascii=False)}


def distill_generator(cfg: DictConfig, tracker: Tracker, selected_ds: datasets.Dataset) -> Path:
    """Fine-tune the local generator on ``selected_ds`` (high-reward candidates) and export it.

    Reuses :class:`~medgr2.modules.sft.SFTPolicy` + :class:`~medgr2.data.collate.ChatCollator` and the
    stages' Trainer, so the generator is trained by the same loop as the SFT policy. Starts from
    ``init``, else ``generator.weights`` when ``generator=hf``, else the cached pretrained base (or the
    ``model`` group's checkpoint). Returns the export folder (``save_pretrained``, LoRA merged), which
    ``generator=hf generator.weights=<folder>`` generates from.
    """
    from medgr2.data.collate import ChatCollator
    from medgr2.modules.sft import SFTPolicy
    from medgr2.pipeline.pretrain import base_weights
    from medgr2.training.item_dataset import ItemDataset

    d = distill_config(cfg)
    rows = selected_ds
    if d.train_size and len(rows) > int(d.train_size):
        rows = rows.select(range(int(d.train_size)))
    if len(rows) == 0:
        raise ValueError("distill: the selected dataset is empty (nothing to learn from)")
    gen_weights = cfg.generator.get("weights") if cfg.generator.get("name") == "hf" else None
    init = d.init or gen_weights or base_weights(cfg, tracker)
    strategy = str(d.strategy)
    module = SFTPolicy(model=to_dict(cfg.model), weights=init, optim=d.optim())
    loader = DataLoader(ItemDataset(rows, lambda r: generator_item(r, strategy)), batch_size=int(d.batch_size),
                        shuffle=True, collate_fn=ChatCollator(module.processor), num_workers=0)
    log.info("distilling the generator on %d selected items (%s prompts) for %d steps from %s",
             len(rows), strategy, d.max_steps, init or "the model's checkpoint")
    out = Path(d.out_dir) if d.out_dir else output_dir(cfg) / "generator"

    def write_meta(folder: Path) -> None:
        atomic_write_json(folder / GENERATOR_META, {"strategy": strategy, "init": str(init),
                                                    "train_rows": len(rows), "max_steps": int(d.max_steps)})

    fit_and_export(cfg, tracker, module, loader, max_steps=int(d.max_steps), out=output_dir(cfg), export_to=out,
                   checkpoints=False, export_tag="generator_dir", on_export=write_meta)
    return out


def run_distill(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    """``stage=distill``: :func:`distill_generator` on ``stage.train_data`` (a ``stage=select`` output)."""
    s = cfg.stage
    if not s.get("train_data"):
        raise ValueError("stage=distill needs stage.train_data=<a selected dataset folder (stage=select output)>")
    rows = datasets.load_from_disk(str(s.train_data))
    out = distill_generator(cfg, tracker, rows)
    print(f"distilled generator: {out}\n  use it: python train.py stage=generate generator=hf "
          f"generator.weights={out} prompt={distill_config(cfg).strategy}")
    return {"distill/train_rows": float(min(len(rows), int(s.get("train_size") or len(rows))))}


__all__ = ["cost_estimate", "default_candidates_dir", "distill_config", "distill_generator", "export_candidates",
           "export_path", "generation_sources", "generator_item", "make_generator", "output_path", "run_distill",
           "run_generate", "summary_metrics"]
