"""``run_generation``: sources -> requests -> backend -> validated records in resumable shards.

The work is a deterministic plan: request ``(source i, sample j)`` is number ``i * samples_per_source + j``
and shards are consecutive runs of ``shard_size`` requests. Rerunning with the same configuration skips
finished shards and redoes only what is pending (API failures, spend cap, or shards never reached), so a
run that was killed, rate-limited or capped ends, after enough reruns, with exactly the dataset an
uninterrupted run writes (same ids, same rows, same order, for a deterministic backend).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medgr2.data.schema import (
    MAX_OPTIONS,
    MIN_OPTIONS,
    QUESTION_TYPES,
    RecordError,
    canonical_modality,
    canonical_question_type,
)
from medgr2.generation._util import derive_seed, stable_hash
from medgr2.generation.backends import GeneratorBackend, GenRequest, GenResult, SimulatedBackend
from medgr2.generation.prompts import get_prompt
from medgr2.generation.rejects import (
    REJECTS_NAME,
    by_modality,
    modality_of,
    modality_table,
    read_rows,
    reject_row,
    shard_rejects_name,
    write_rows,
)
from medgr2.generation.store import (
    check_manifest,
    commit_manifest,
    new_manifest,
    read_manifest,
    read_shard_records,
    shard_file_name,
    write_shard,
)
from medgr2.generation.validate import candidate_id, parse_candidate
from medgr2.utils.io import exclusive_lock

logger = logging.getLogger(__name__)


class GenerationStopped(RuntimeError):
    """The backend says no request can succeed (a refused API key, an unknown model): the run stopped after
    committing what it had; everything not done is pending and the same command resumes once it is fixed."""


@dataclass
class GenerationSummary:
    """What a ``run_generation`` call did and where the output stands.

    ``kept``, ``rejected`` (by reason: validation rejects and answers the backend flagged, e.g. ``safety``),
    ``failed`` (requests ended for good by an API error, by kind), ``kept_defects`` (simulated defect kinds
    among kept records), ``rejects_by_modality`` (rejected + failed, ``{modality: {reason: n}}``) and
    ``requested_by_modality`` describe the whole ``out_dir``; ``attempted``, ``api_calls``, ``api_errors``
    (by kind) and ``usage`` (reported tokens: ``prompt``, ``candidates``, ``thoughts``) describe this call
    only; ``pending`` counts requests not yet done (retryable failures, spend cap, never reached) — zero
    means complete. Failed requests are done: they do not keep a run incomplete.
    """

    out_dir: str
    requested: int = 0
    attempted: int = 0
    api_calls: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    api_errors: Counter = field(default_factory=Counter)
    kept_defects: Counter = field(default_factory=Counter)
    usage: Counter = field(default_factory=Counter)
    rejects_by_modality: dict = field(default_factory=dict)
    requested_by_modality: dict = field(default_factory=dict)
    rejects_file: str = ""
    pending: int = 0
    shards: int = 0
    shards_done: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every planned request is done: kept, rejected or failed for good."""
        return self.pending == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for MLflow params/metrics or logs)."""
        out = asdict(self)
        for key in ("rejected", "failed", "api_errors", "kept_defects", "usage"):
            out[key] = dict(getattr(self, key))
        out["complete"] = self.complete
        return out


def plan_requests(
    sources: Sequence[Mapping[str, Any]],
    strategy: str,
    *,
    samples_per_source: int = 1,
    iteration: int = 0,
    seed: int = 0,
    question_types: Sequence[str] | None = None,
) -> list[GenRequest]:
    """The deterministic list of requests: source-major, then sample index.

    The requested question type is ``question_types`` cycled over the plan when given, else the source's
    own type (or all types cycled when the source has none). The number of options asked for is the
    source's, so generated items keep the benchmark's option-count distribution.
    """
    template = get_prompt(strategy)
    qtypes = [canonical_question_type(q) for q in question_types] if question_types else None
    seen: set[str] = set()
    requests = []
    for i, src in enumerate(sources):
        sid = str(src.get("id", ""))
        if not sid or sid in seen:
            raise ValueError(
                f"source {i} has a missing or duplicate id {sid!r}; ids key the generated records"
            )
        seen.add(sid)
        modality = canonical_modality(str(src.get("modality", "")))
        n_src = len(src.get("options") or [])
        n_options = n_src if MIN_OPTIONS <= n_src <= MAX_OPTIONS else None
        for j in range(samples_per_source):
            n = i * samples_per_source + j
            if qtypes:
                qtype = qtypes[n % len(qtypes)]
            elif src.get("question_type"):
                qtype = canonical_question_type(str(src["question_type"]))
            else:
                qtype = QUESTION_TYPES[n % len(QUESTION_TYPES)]
            key = candidate_id(sid, iteration, seed, template.name, j)
            requests.append(
                GenRequest(
                    key=key,
                    source=src,
                    prompt=template.render(question_type=qtype, modality=modality, n_options=n_options),
                    strategy=template.name,
                    question_type=qtype,
                    sample_index=j,
                    seed=derive_seed(seed, key),
                    n_options=n_options,
                    response_schema=template.response_schema(),
                )
            )
    return requests


def _backend_fingerprint(backend: GeneratorBackend) -> dict[str, Any]:
    fp = getattr(backend, "fingerprint", None)
    return fp() if callable(fp) else {"name": backend.name, "model": backend.model}


def run_generation(
    sources: Sequence[Mapping[str, Any]],
    backend: GeneratorBackend,
    strategy: str,
    out_dir: Path | str,
    *,
    samples_per_source: int = 1,
    iteration: int = 0,
    seed: int = 0,
    shard_size: int = 256,
    question_types: Sequence[str] | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> GenerationSummary:
    """Generate ``samples_per_source`` candidates per source record into resumable shards in ``out_dir``.

    Each shard is validated (rejections counted by reason), written atomically as Parquet and recorded in
    ``manifest.json`` with its counts, its pending request keys (retryable API failures after retries,
    spend cap) and its failed ones (API errors no retry fixes); every rejected or failed request gets a line
    in ``rejects.jsonl`` (:mod:`~medgr2.generation.rejects`). A rerun with the same configuration skips
    finished shards and retries pending requests — not failed ones, unless ``retry_failed``; a different
    configuration raises :class:`~medgr2.generation.store.GenerationConfigError`. When the backend reports a
    ``fatal`` error (a refused key), the work done so far is committed and :class:`GenerationStopped` is
    raised. Read the result with :func:`~medgr2.generation.store.load_generated`.

    Holds a lock on ``out_dir`` (:func:`~medgr2.utils.io.exclusive_lock`): a second writer waits, then resumes.
    """
    with exclusive_lock(out_dir, what="generating candidates into"):
        return _run_generation(sources, backend, strategy, out_dir, samples_per_source=samples_per_source,
                               iteration=iteration, seed=seed, shard_size=shard_size, question_types=question_types,
                               progress=progress, retry_failed=retry_failed)


def _run_generation(sources: Sequence[Mapping[str, Any]], backend: GeneratorBackend, strategy: str, out_dir: Path | str,
                    *, samples_per_source: int, iteration: int, seed: int, shard_size: int,
                    question_types: Sequence[str] | None, progress: bool, retry_failed: bool) -> GenerationSummary:
    """The body of :func:`run_generation` (caller holds the folder lock)."""
    t0 = time.perf_counter()
    if shard_size < 1 or samples_per_source < 1:
        raise ValueError("shard_size and samples_per_source must be ≥ 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = get_prompt(strategy)
    if isinstance(backend, SimulatedBackend) and backend.pool is None:
        # Mismatched items then come from all sources rather than from the current batch, so a request's
        # output does not depend on which other requests happened to be retried with it.
        backend = backend.with_pool(sources)
    requests = plan_requests(
        sources,
        strategy,
        samples_per_source=samples_per_source,
        iteration=iteration,
        seed=seed,
        question_types=question_types,
    )
    shards = [requests[k : k + shard_size] for k in range(0, len(requests), shard_size)]
    order = {r.key: n for n, r in enumerate(requests)}

    config = {
        "strategy": template.name,
        "prompt_version": template.version,
        "samples_per_source": samples_per_source,
        "iteration": iteration,
        "seed": seed,
        "shard_size": shard_size,
        "question_types": list(question_types) if question_types else None,
        "n_sources": len(sources),
        "sources": stable_hash([str(s.get("id")) for s in sources]),
        "backend": _backend_fingerprint(backend),
    }
    fingerprint = stable_hash(config, length=24)
    manifest = read_manifest(out)
    if manifest is None:
        manifest = new_manifest(fingerprint, config, len(requests), len(shards))
    else:
        check_manifest(manifest, fingerprint, config, out)

    summary = GenerationSummary(out_dir=str(out), requested=len(requests), shards=len(shards))
    summary.requested_by_modality = dict(sorted(Counter(modality_of(r.source) for r in requests).items()))
    done_before = sum(
        len(shards[int(k)]) - len(e["pending"]) for k, e in manifest["shards"].items() if int(k) < len(shards)
    )
    chunk_size = max(1, int(getattr(backend, "batch_size", 32) or 32))
    bar = tqdm(
        total=len(requests),
        initial=done_before,
        unit="req",
        desc=f"generate[{template.name}]",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    stop = False
    fatal: str | None = None
    kept_this_run = rejected_this_run = 0
    try:
        for si, shard in enumerate(shards):
            entry = manifest["shards"].get(str(si))
            if entry is not None and not entry["pending"] and not (retry_failed and entry.get("failed")):
                summary.shards_skipped += 1
                continue
            if stop:
                break
            old_failed: dict[str, str] = dict((entry or {}).get("failed") or {})
            if entry is None:
                todo, existing, old_rejects, revision = shard, [], [], 0
            else:
                redo = set(entry["pending"]) | (set(old_failed) if retry_failed else set())
                todo = [r for r in shard if r.key in redo]
                existing = read_shard_records(out, entry["file"])
                old_rejects = [row for row in read_rows(out / entry["rejects_file"]) if row["id"] not in redo] \
                    if entry.get("rejects_file") else []
                old_failed = {k: v for k, v in old_failed.items() if k not in redo}
                revision = int(entry.get("revision", 0)) + 1

            kept: list[dict[str, Any]] = []
            rejected: Counter = Counter()
            errors: Counter = Counter()
            usage: Counter = Counter()
            new_rejects: list[dict[str, Any]] = []
            failed: dict[str, str] = {}
            still_pending: list[str] = []
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start : start + chunk_size]
                results = _checked(backend.generate(chunk), chunk)
                summary.attempted += len(chunk)
                for req, res in zip(chunk, results, strict=True):
                    summary.api_calls += res.attempts
                    usage.update(res.usage or {})
                    if res.fatal:
                        fatal = fatal or res.detail
                    if res.error is not None:
                        errors[res.error] += 1
                        if res.final:
                            failed[req.key] = res.error
                            new_rejects.append(reject_row(req, res.error, "failed", res.detail))
                        else:
                            still_pending.append(req.key)
                        continue
                    if res.reason is not None or res.text is None:
                        reason = res.reason or "empty"
                        rejected[reason] += 1
                        new_rejects.append(reject_row(req, reason, "rejected", res.detail))
                        continue
                    try:
                        kept.append(
                            parse_candidate(
                                res.text,
                                req.source,
                                backend=backend.name,
                                model=str(backend.model),
                                prompt=template,
                                iteration=iteration,
                                seed=seed,
                                sample_index=req.sample_index,
                                defect=res.defect,
                                requested_question_type=req.question_type,
                            )
                        )
                    except RecordError as exc:
                        rejected[exc.reason] += 1
                        new_rejects.append(reject_row(req, exc.reason, "rejected", str(exc)))
                bar.update(sum(1 for r in results if r.error is None or r.final))
                bar.set_postfix(
                    kept=kept_this_run + len(kept),
                    rejected=rejected_this_run + sum(rejected.values()),
                    errors=sum(summary.api_errors.values()) + sum(errors.values()),
                    refresh=False,
                )
                capped = results and all(r.error == "spend_cap" for r in results)
                if fatal is not None or capped:
                    # Every further call would be refused too: commit what we have and stop early.
                    stop = True
                    still_pending.extend(r.key for r in todo[start + len(chunk) :])
                    break

            # Merge with the records of earlier revisions; ids are request keys, so order is the plan's.
            by_id = {rec["id"]: rec for rec in existing}
            by_id.update({rec["id"]: rec for rec in kept})
            records = sorted(by_id.values(), key=lambda rec: order[rec["id"]])
            name = shard_file_name(si, revision)
            write_shard(out, name, records)
            shard_rejects = sorted(old_rejects + new_rejects, key=lambda row: order[row["id"]])
            rejects_name = shard_rejects_name(si, revision) if shard_rejects else None
            if rejects_name:
                write_rows(out / rejects_name, shard_rejects)
            old = entry or {}
            manifest["shards"][str(si)] = {
                "file": name,
                "rejects_file": rejects_name,
                "revision": revision,
                "requested": len(shard),
                "kept": len(records),
                "rejected": dict(Counter(old.get("rejected", {})) + rejected),
                "failed": {**old_failed, **failed},
                "kept_defects": dict(Counter(_defect(r) for r in records if _defect(r))),
                "errors_last_run": dict(errors),
                "pending": still_pending,
            }
            total = Counter(manifest.get("usage") or {})
            total.update(usage)  # update, not +: zero counts stay visible in the manifest
            manifest["usage"] = dict(total)
            commit_manifest(out, manifest)
            summary.shards_written += 1
            kept_this_run += len(kept)
            rejected_this_run += sum(rejected.values())
            summary.api_errors.update(errors)
            summary.usage.update(usage)
    finally:
        bar.close()

    all_rejects: list[dict[str, Any]] = []
    for si in range(len(shards)):
        entry = manifest["shards"].get(str(si))
        if entry is None:
            summary.pending += len(shards[si])
            continue
        summary.kept += entry["kept"]
        summary.rejected.update(entry["rejected"])
        summary.failed.update(Counter((entry.get("failed") or {}).values()))
        summary.kept_defects.update(entry.get("kept_defects", {}))
        summary.pending += len(entry["pending"])
        summary.shards_done += 0 if entry["pending"] else 1
        if entry.get("rejects_file"):
            all_rejects.extend(read_rows(out / entry["rejects_file"]))
    write_rows(out / REJECTS_NAME, all_rejects)
    summary.rejects_file = str(out / REJECTS_NAME)
    summary.rejects_by_modality = by_modality(all_rejects)
    # Shards never reached (a stop at the spend cap) are pending too; say so where a person will look.
    manifest["status"] = {
        "pending_requests": summary.pending,
        "complete": summary.complete,
        "kept": summary.kept,
        "rejected": dict(summary.rejected),
    }
    if summary.failed:  # only when there are some: the status of runs without any keeps its old shape
        manifest["status"]["failed"] = dict(summary.failed)
    commit_manifest(out, manifest)
    summary.elapsed_s = time.perf_counter() - t0
    if fatal is not None:
        raise GenerationStopped(
            f"{fatal} (generation stopped after {summary.api_calls} API call(s); {summary.pending} request(s) "
            f"pending in {out}, nothing lost)"
        )
    level = logging.INFO if summary.complete else logging.WARNING
    failed_n = sum(summary.failed.values())
    logger.log(
        level,
        "generation into %s: %d/%d requests done, kept %d, rejected %s, failed for good %s, api errors %s, "
        "%d pending%s%s",
        out,
        summary.requested - summary.pending,
        summary.requested,
        summary.kept,
        dict(summary.rejected),
        dict(summary.failed),
        dict(summary.api_errors),
        summary.pending,
        "" if summary.complete else " (rerun the same command to retry them)",
        f"; {failed_n} failed request(s) are not resent unless generator.retry_failed=true" if failed_n else "",
    )
    if summary.rejected.get("max_tokens"):
        logger.warning("%d answer(s) hit MAX_TOKENS (cut, or no text left after thinking): raise "
                       "generator.max_output_tokens or lower generator.thinking_budget", summary.rejected["max_tokens"])
    if all_rejects:
        logger.info("rejected and failed requests by modality (%s):\n%s", summary.rejects_file,
                    modality_table(summary.rejects_by_modality, summary.requested_by_modality))
    return summary


def _checked(results: list[GenResult], chunk: list[GenRequest]) -> list[GenResult]:
    """Backends must answer every request in order; a broken contract would silently misattribute items."""
    if len(results) != len(chunk) or any(r.key != q.key for r, q in zip(results, chunk, strict=False)):
        raise RuntimeError(
            f"backend returned {len(results)} results for {len(chunk)} requests, or out of order"
        )
    return results


def _defect(rec: Mapping[str, Any]) -> str | None:
    return json.loads(rec["provenance"]).get("defect")
