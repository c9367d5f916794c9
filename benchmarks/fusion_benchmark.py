"""Does fusion earn its place? Fused vs its own ablations vs its pool vs converged baselines.

For one dataset and several seeds (paired: every row of a seed fuses the same trained
pool): train a heterogeneous pool (two members per task), then score on the same test
split

- the pool members, and (a) the best member per task (chosen on validation);
- (b) the pool's ensemble (`ensemble-stacked`, and the plain `ensemble-mean`);
- (c) `mlp-correction`: the ensemble plus a plain MLP on the members' last hidden states,
  no gates and no cross-task path, trained exactly like the fused model;
- (d) `akf-own-task`: the AKF stack with the cross-task path off (`top_k: 0`);
- (e) `emm` (configs/fusion/emm.yaml) and (f) `reference` (configs/fusion/reference.yaml);
- Shared-Bottom, MMoE, PLE, ESMM, AITM end to end (ESMM/AITM in their funnel form on
  funnel data, in their reference implementations' non-funnel form otherwise).

Every model trains with the same generic loop to convergence: early stopping on mean
validation AUC with `--patience` (>= 3) under an epoch cap that must never bind; a seed
whose best epoch is within `patience` of its cap is reported as a failed row. Training
runs in-process (the loop Ray Train runs in each worker), which keeps a 2-core machine's
time on the models rather than on Ray start-up.

    python benchmarks/fusion_benchmark.py --dataset census --seeds 0 1 2 3 4
    python benchmarks/fusion_benchmark.py --dataset ali_ccp --rows 300000

`census` is the real UCI file (validation and test carved 10 % / 10 % from the public
training file; the official test file is held back); `ali_ccp` and `aliexpress` are
synthetic data at size with the real datasets' schemas (the real files here are 100-row
samples), and are labelled as such. Finished runs are appended to
`benchmarks/results/runs/<name>.jsonl` (committed, so a benchmark resumes on a new
machine; `--runs-dir`) and skipped on rerun, so an interrupted benchmark resumes
(several processes may work on different seeds of one file); prepared data, pool
checkpoints and Tune's files stay in `--work-dir`. The tables
(`benchmarks/results/fusion_<dataset>.md` and its JSON twin `.json`) are rewritten from
all of them (`--render-only` rewrites them without training).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scipy import stats
from torch import nn

from emm_ray.baselines import BASELINES, build_baseline, labels_are_nested
from emm_ray.config import load_yaml_config
from emm_ray.data.batch import Batch
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.data.synthetic import SyntheticGenerator
from emm_ray.evaluation.metrics import score_module
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.fusion.stage import FuseSpec
from emm_ray.models import build_model
from emm_ray.runtime import init_ray
from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything
from emm_ray.tune.baselines import load_baseline_search, search_baseline

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "benchmarks" / "results" / "runs"
# Two members of different architectures per task: (architecture, task position). On
# census, the first task's pair is the two best income architectures of the zoo that
# train fast (benchmarks/results/census_pool.md: dcn_v2 .9510, deepfm .9488), as a team
# would fuse its best models; elsewhere a plain mlp + deepfm.
POOL_NOTES = {
    "census": "; for income the two best fast architectures of "
    "benchmarks/results/census_pool.md, as configs/pools/census.yaml"
}
POOLS: dict[str, tuple[tuple[str, int], ...]] = {
    "census": (("dcn_v2", 0), ("deepfm", 0), ("dcn_v2", 1), ("wide_deep", 1)),
    "ali_ccp": (("mlp", 0), ("deepfm", 0), ("dcn_v2", 1), ("wide_deep", 1)),
    "aliexpress": (("mlp", 0), ("deepfm", 0), ("dcn_v2", 1), ("wide_deep", 1)),
}
MEMBER_HPARAMS: dict[str, dict[str, Any]] = {
    "mlp": {"embed_dim": 16, "hidden": (256, 128, 64)},
    "deepfm": {"embed_dim": 16, "hidden": (128, 64)},
    "dcn_v2": {"embed_dim": 16, "hidden": (256, 128, 64)},
    "wide_deep": {"embed_dim": 16, "hidden": (128, 64)},
}
# `--split-features` (census): two teams, each with its own fields, as when the income
# and the never-married models were built by different teams from different tables. The
# income members see the employment and money record only; the never-married members see
# the person and household only. What one task's members lack, the other's components
# hold: the cross-task path of the AKF stack is the only part of the fused model that
# can bring it over (the ensemble and the own-task MLP correction cannot).
EMPLOYMENT_FIELDS = (
    "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "major_industry_code", "major_occupation_code", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat",
    "own_business_or_self_employed", "wage_per_hour", "num_persons_worked_for_employer",
    "weeks_worked_in_year", "capital_gains", "capital_losses", "dividends_from_stocks",
)  # fmt: skip
SPLIT_FEATURES_TEAMS = {"income": "employment", "never_married": "household"}
FUNNEL_BASELINES = ("esmm", "aitm")
# Table order of the kinds; the JSON twin uses the same names.
KINDS = ("fused", "ablation", "ensemble", "pool", "baseline", "baseline-tuned")
# Each fused model against what: the paired differences the table reports (rows absent
# from a results file are skipped). `-pool-stack` rows start at a stacking over every
# member's logit (`ensemble_inputs: pool`) and are compared with their own controls.
PAIRED = {
    "emm": ("ensemble-stacked", "mlp-correction", "akf-own-task", "best-member", "reference"),
    "emm-pool-stack": (
        "ensemble-pool-stacked",
        "mlp-correction-pool-stack",
        "akf-own-task-pool-stack",
        "emm",
        "best-member",
    ),
    "ensemble-pool-stacked": ("ensemble-stacked",),
    "emm-dropout": ("mlp-correction", "emm"),
    "emm-narrow": ("mlp-correction", "emm"),
    "emm-fresh-embedding": (
        "mlp-correction-fresh-embedding",
        "akf-own-task-fresh-embedding",
        "mlp-correction",
        "emm",
    ),
    "emm-fresh-pool-stack": (
        "ensemble-pool-stacked",
        "mlp-correction-fresh-pool-stack",
        "akf-own-task-fresh-pool-stack",
        "mlp-correction-pool-stack",
        "emm-pool-stack",
    ),
}
# The ensembles scored per seed: name -> the settings of the fused model's start.
ENSEMBLES: dict[str, dict[str, str]] = {
    "mean": {"ensemble": "mean", "ensemble_inputs": "own"},
    "stacked": {"ensemble": "stacked", "ensemble_inputs": "own"},
    "pool-stacked": {"ensemble": "stacked", "ensemble_inputs": "pool"},
}
logger = logging.getLogger("fusion_benchmark")


def fused_variants() -> dict[str, tuple[str, FusionConfig]]:
    """Name -> (kind, config) of every trained setting of the fused model.

    The names fix the ensemble's inputs, whatever `configs/fusion/emm.yaml` ships, so rows
    recorded before the shipped default changed keep their meaning: `emm` and its controls
    stack each task's own members, the `-pool-stack` rows every member (the shipped
    default since session 15).
    """
    emm = load_yaml_config(REPO / "configs/fusion/emm.yaml", FusionConfig).model_copy(
        update={"ensemble_inputs": "own"}
    )
    pool_stack = {"ensemble_inputs": "pool"}
    fresh = {"embedding": "fresh"}
    return {
        "emm": ("fused", emm),
        "reference": (
            "fused",
            load_yaml_config(REPO / "configs/fusion/reference.yaml", FusionConfig),
        ),
        "mlp-correction": ("ablation", emm.model_copy(update={"correction": "mlp"})),
        "akf-own-task": ("ablation", emm.model_copy(update={"top_k": 0})),
        "emm-fresh-embedding": ("fused", emm.model_copy(update=fresh)),
        "mlp-correction-fresh-embedding": (
            "ablation",
            emm.model_copy(update={"correction": "mlp", **fresh}),
        ),
        "akf-own-task-fresh-embedding": ("ablation", emm.model_copy(update={"top_k": 0, **fresh})),
        "emm-dropout": ("fused", emm.model_copy(update={"dropout": 0.2})),
        "emm-narrow": ("fused", emm.model_copy(update={"d_model": 32, "tower_hidden": (32,)})),
        "emm-frozen-pool": ("fused", emm.model_copy(update={"component_input": "none"})),
        "emm-pool-stack": ("fused", emm.model_copy(update=pool_stack)),
        "mlp-correction-pool-stack": (
            "ablation",
            emm.model_copy(update={"correction": "mlp", **pool_stack}),
        ),
        "akf-own-task-pool-stack": ("ablation", emm.model_copy(update={"top_k": 0, **pool_stack})),
        "emm-fresh-pool-stack": ("fused", emm.model_copy(update={**fresh, **pool_stack})),
        "mlp-correction-fresh-pool-stack": (
            "ablation",
            emm.model_copy(update={"correction": "mlp", **fresh, **pool_stack}),
        ),
        "akf-own-task-fresh-pool-stack": (
            "ablation",
            emm.model_copy(update={"top_k": 0, **fresh, **pool_stack}),
        ),
    }


DEFAULT_VARIANTS = ["emm", "reference", "mlp-correction", "akf-own-task"]


def prepare(
    dataset: str,
    rows: int,
    work_dir: Path,
    tasks: tuple[str, ...] | None = None,
    regime: str = "planted",
) -> PreparedDataset:
    if dataset == "census":
        config = DatasetConfig(name="census", source="real", tasks=tasks)
        directory = "census-real" + ("" if tasks is None else "-" + "-".join(tasks))
        return prepare_dataset(config, Path(tempfile.gettempdir()) / "emm-bench" / directory)
    config = DatasetConfig(
        name=dataset, source="synthetic", rows=rows, seed=0, sparse_min_count=2, regime=regime
    )
    suffix = "" if regime == "planted" else f"-{regime}"
    return prepare_dataset(config, work_dir / f"{dataset}-synthetic-{rows}{suffix}")


class Bench:
    """One dataset's splits, training settings and the results file."""

    def __init__(
        self,
        prepared: PreparedDataset,
        train: TrainConfig,
        correction_train: TrainConfig,
        results: Path,
        work_dir: Path,
    ) -> None:
        self.prepared = prepared
        self.schema = prepared.schema
        self.train_data = load_split(prepared.path, "train")
        self.validation = load_split(prepared.path, "validation")
        self.test = load_split(prepared.path, "test")
        self.train = train
        self.correction_train = correction_train
        self.results = results
        self.work_dir = work_dir
        self.funnel = labels_are_nested(self.train_data.labels)
        self.pool_name = results.stem
        self.ignored: dict[str, tuple[str, ...]] = {}
        self.fusion_rows: tuple[Batch, Batch] | None = None

    def split_features(self) -> None:
        """Census members see only their team's fields (`SPLIT_FEATURES_TEAMS`)."""
        fields = {*self.schema.sparse_names, *self.schema.dense_names}
        employment = set(EMPLOYMENT_FIELDS) & fields
        for task, team in SPLIT_FEATURES_TEAMS.items():
            blind = fields - employment if team == "employment" else employment
            self.ignored[task] = tuple(sorted(blind))

    def fuse_on_validation_halves(self) -> None:
        """Fused rows train on the first half of the validation split and early-stop on
        the second: rows the frozen members never saw (the held-out diagnosis)."""
        half = len(self.validation) // 2
        order = torch.randperm(len(self.validation), generator=torch.Generator().manual_seed(0))
        self.fusion_rows = (
            self.validation.slice(order[:half]),
            self.validation.slice(order[half:]),
        )

    def done(self) -> set[tuple[int, str]]:
        """(seed, model) pairs already in the results file (re-read: processes share it)."""
        return {(r["seed"], r["model"]) for r in read_rows(self.results)}

    def run(
        self,
        seed: int,
        name: str,
        kind: str,
        build: Callable[[], nn.Module],
        task_indices: list[int],
        task_names: list[str],
        train: TrainConfig | None = None,
        form: str = "",
        rows: tuple[Batch, Batch] | None = None,
        record: bool = True,
    ) -> nn.Module:
        """Build (seeded), train (`train`, else the common settings) on `rows` (training,
        early-stopping rows; default: the train and validation splits), score on
        validation and test, append one JSON line per task (unless not `record`)."""
        seed_everything(seed)
        module = build()
        config = (train or self.train).model_copy(update={"seed": seed})
        fit_rows, stop_rows = rows or (self.train_data, self.validation)
        started = time.perf_counter()
        result = fit(
            module,
            TensorBatches(fit_rows, config.batch_size, shuffle=True, seed=seed),
            TensorBatches(stop_rows, config.eval_batch_size_on("cpu")),
            task_indices,
            config,
            task_names=task_names,
        )
        wall = time.perf_counter() - started
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        extra = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "max_epochs": config.epochs,
            "patience": config.patience,
            "form": form,
        }
        if isinstance(module, EMMModel):
            extra["corrections_kept"] = module.ensemble.correction_mask().tolist()
        if record:
            self.record(seed, name, kind, module, task_indices, task_names, wall, trainable, extra)
        return module

    def score_ensemble(self, seed: int, pool: list[PoolMember], ensemble: str) -> None:
        """(b) The pool's ensemble alone (where `emm` starts): fitted if stacked, untrained."""
        config = fused_variants()["emm"][1].model_copy(
            update={**ENSEMBLES[ensemble], "correction": "none"}
        )
        model = EMMModel(self.schema, pool, config)
        started = time.perf_counter()
        model.calibrate(
            TensorBatches(self.validation, self.train.eval_batch_size_on("cpu")).batches(0)
        )
        wall = time.perf_counter() - started
        fitted = (
            sum(e.weight.numel() + 1 for e in model.ensemble.tasks) if ensemble != "mean" else 0
        )
        extra = {"best_epoch": 0, "epochs_run": 0, "max_epochs": 0, "patience": None, "form": ""}
        self.record(
            seed,
            f"ensemble-{ensemble}",
            "ensemble",
            model,
            model.task_indices,
            model.task_names,
            wall,
            fitted,
            extra,
        )

    def record(
        self,
        seed: int,
        name: str,
        kind: str,
        module: nn.Module,
        task_indices: list[int],
        task_names: list[str],
        wall: float,
        trainable: int,
        extra: dict[str, Any],
    ) -> None:
        """Score `module` on validation and test; append one JSON line per task."""
        scored = {
            split: {
                r.task: r
                for r in score_module(name, "fused", module, data, task_indices, task_names)
            }
            for split, data in (("validation", self.validation), ("test", self.test))
        }
        with self.results.open("a") as out:
            for task in task_names:
                row = scored["test"][task]
                line = {
                    "model": name,
                    "kind": kind,
                    "task": task,
                    "auc": row.auc,
                    "logloss": row.logloss,
                    "rows": row.rows,
                    "val_auc": scored["validation"][task].auc,
                    "seed": seed,
                    "wall_seconds": wall,
                    "trainable_parameters": trainable,
                    **extra,
                }
                out.write(json.dumps(line) + "\n")
        logger.info(
            "seed %d %s: test AUC %s in %.0f s (best epoch %s of %s)",
            seed,
            name,
            [round(scored["test"][t].auc or float("nan"), 4) for t in task_names],
            wall,
            extra["best_epoch"],
            extra["epochs_run"],
        )


def run_seed(
    bench: Bench,
    seed: int,
    members: tuple[tuple[str, int], ...],
    variants: dict[str, tuple[str, FusionConfig]],
    baselines: list[str],
) -> None:
    schema = bench.schema
    tasks = schema.task_names
    done = bench.done()
    pending = [v for v in variants if (seed, v) not in done] + [
        f"ensemble-{e}" for e in ENSEMBLES if (seed, f"ensemble-{e}") not in done
    ]
    pool: list[PoolMember] = []
    for architecture, task_position in members if pending else ():
        task = tasks[task_position]
        name = f"{architecture}_{task}"

        def build(architecture: str = architecture, task: str = task) -> nn.Module:
            hparams = MEMBER_HPARAMS[architecture] | {"ignore_fields": bench.ignored.get(task, ())}
            return build_model(architecture, schema, task, **hparams)

        checkpoint = bench.work_dir / f"{bench.pool_name}-seed{seed}-{name}.pt"
        if checkpoint.is_file():  # written after its row: a finished member
            model = build()
            model.load_state_dict(torch.load(checkpoint, weights_only=True))
        else:  # not trained yet, or its row is in but its checkpoint is not (new machine)
            model = bench.run(
                seed,
                name,
                "pool",
                build,
                [schema.task_index(task)],
                [task],
                record=(seed, name) not in done,
            )
            torch.save(model.state_dict(), checkpoint)
        pool.append(PoolMember(name, model.eval()))
    for ensemble in ENSEMBLES:
        if (seed, f"ensemble-{ensemble}") not in bench.done():
            bench.score_ensemble(seed, pool, ensemble)
    fused_tasks = [t for t in tasks if t in {m.task for m in pool}]
    for variant, (kind, config) in variants.items():
        if (seed, variant) not in bench.done():
            bench.run(
                seed,
                variant,
                kind,
                lambda c=config: EMMModel(schema, pool, c),
                [schema.task_index(t) for t in fused_tasks],
                fused_tasks,
                # the fuse stage's own rule: validated before training when pool-residual
                FuseSpec(fusion=config, train=bench.correction_train).fit_config
                if config.prediction == "pool_residual"
                else None,
                rows=bench.fusion_rows,
            )
    for name in baselines:
        if (seed, name) in bench.done():
            continue
        hparams = {"funnel": bench.funnel} if name in FUNNEL_BASELINES else {}
        form = ("funnel" if bench.funnel else "parallel") if hparams else ""
        bench.run(
            seed,
            name,
            "baseline",
            lambda n=name, h=hparams: build_baseline(n, schema, **h),
            list(range(len(tasks))),
            tasks,
            form=form,
        )


def searched_baselines(
    bench: Bench, search: Path, work_dir: Path, baselines: list[str]
) -> dict[str, dict[str, Any]]:
    """Per baseline, the best hyperparameters and lr of one Ray Tune search (seed 0's data
    and split), cached beside the results so a rerun does not search again."""
    cache = bench.results.with_name(f"{bench.results.stem}-tuned.json")
    found: dict[str, dict[str, Any]] = json.loads(cache.read_text()) if cache.is_file() else {}
    spec = load_baseline_search(search)
    for name in baselines:
        if name in found:
            continue
        init_ray(num_cpus=2)
        fixed = {"funnel": bench.funnel} if name in FUNNEL_BASELINES else {}
        started = time.perf_counter()
        result = search_baseline(
            name,
            spec,
            data_dir=bench.prepared.path,
            storage_path=work_dir / "tune",
            fixed=fixed,
            base_lr=bench.train.lr,
        )
        found[name] = {
            "hparams": result.hparams,
            "lr": result.lr,
            "search_val_auc": result.val_auc,
            "trials": result.trials,
            "budget": list(spec.budget),
            "search_seconds": time.perf_counter() - started,
        }
        cache.write_text(json.dumps(found, indent=1) + "\n")
        logger.info("searched %s: %s", name, found[name])
    return found


def run_tuned(bench: Bench, seed: int, searched: dict[str, dict[str, Any]]) -> None:
    """Each baseline's searched configuration, trained to convergence like every row."""
    tasks = bench.schema.task_names
    for name, found in searched.items():
        model = f"{name}-tuned"
        if (seed, model) in bench.done():
            continue
        funnel = found["hparams"].get("funnel")
        bench.run(
            seed,
            model,
            "baseline-tuned",
            lambda n=name, h=found["hparams"]: build_baseline(n, bench.schema, **h),
            list(range(len(tasks))),
            tasks,
            bench.train.model_copy(update={"lr": found["lr"]}),
            form="" if funnel is None else ("funnel" if funnel else "parallel"),
        )


def read_rows(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def with_best_members(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add (a): per seed and task, the pool member with the best validation AUC."""
    best = []
    for seed in sorted({r["seed"] for r in rows}):
        for task in dict.fromkeys(r["task"] for r in rows):
            members = [
                r for r in rows if r["kind"] == "pool" and r["seed"] == seed and r["task"] == task
            ]
            if members:
                chosen = max(members, key=lambda r: r["val_auc"])
                best.append(
                    {**chosen, "model": "best-member", "kind": "ablation", "form": chosen["model"]}
                )
    return rows + best


def converged(row: dict[str, Any]) -> bool:
    """False when the best epoch is within `patience` of the cap (the cap may have bound)."""
    if not row["max_epochs"]:
        return True
    return row["best_epoch"] <= row["max_epochs"] - row["patience"]


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON twin: one row per (model, task), over seeds."""
    out = []
    keys = dict.fromkeys((r["model"], r["kind"], r["task"]) for r in rows)
    for model, kind, task in sorted(keys, key=lambda k: KINDS.index(k[1])):
        mine = sorted(
            (r for r in rows if (r["model"], r["kind"], r["task"]) == (model, kind, task)),
            key=lambda r: r["seed"],
        )
        aucs = [r["auc"] for r in mine]
        out.append(
            {
                "model": model,
                "kind": kind,
                "task": task,
                "auc_mean": statistics.mean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "seeds": [r["seed"] for r in mine],
                "best_epochs": [r["best_epoch"] for r in mine],
                "max_epochs": max(r["max_epochs"] for r in mine),
                "patience": mine[0]["patience"],
                "converged": all(converged(r) for r in mine),
                "form": mine[0].get("form", ""),
                "trainable_params": round(statistics.mean(r["trainable_parameters"] for r in mine)),
                "train_seconds": statistics.mean(r["wall_seconds"] for r in mine),
            }
        )
    return out


def paired_differences(rows: list[dict[str, Any]], model: str, against: str) -> dict[str, Any]:
    """Per task: mean test-AUC difference `model - against` over shared seeds, 95 % t-interval."""
    result = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        ours = {r["seed"]: r["auc"] for r in rows if r["model"] == model and r["task"] == task}
        theirs = {r["seed"]: r["auc"] for r in rows if r["model"] == against and r["task"] == task}
        seeds = sorted(set(ours) & set(theirs))
        if len(seeds) < 2:
            continue
        diffs = [ours[s] - theirs[s] for s in seeds]
        mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
        half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
        result[task] = {"mean": mean, "low": mean - half, "high": mean + half, "seeds": seeds}
    return result


def render(rows: list[dict[str, Any]], title: str, notes: list[str]) -> str:
    summary = summary_rows(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys((r["model"], r["kind"]) for r in summary))
    header = [
        "model",
        "kind",
        "form",
        *(f"test AUC {t}" for t in tasks),
        "seeds",
        "best epochs / cap",
        "converged",
        "trainable params",
        "train s",
    ]
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for model, kind in models:
        mine = [r for r in summary if r["model"] == model]
        cells = []
        for task in tasks:
            row = next((r for r in mine if r["task"] == task), None)
            cells.append("" if row is None else f"{row['auc_mean']:.4f} ± {row['auc_std']:.4f}")
        first = mine[0]
        epochs = " ".join(str(e) for e in first["best_epochs"])
        cap = f" / {first['max_epochs']}" if first["max_epochs"] else ""
        ok = "yes" if all(r["converged"] for r in mine) else "**no: cap bound (failed row)**"
        lines.append(
            "| "
            + " | ".join(
                [model, kind, first["form"], *cells, str(len(first["seeds"]))]
                + [
                    epochs + cap,
                    ok,
                    f"{first['trainable_params']:,}",
                    f"{first['train_seconds']:.0f}",
                ]
            )
            + " |"
        )
    baselines = [r for r in summary if r["kind"].startswith("baseline") and r["converged"]]
    for fused, controls in PAIRED.items():
        if not any(r["model"] == fused for r in summary):
            continue
        lines += [
            "",
            f"Paired differences of `{fused}`, test AUC (mean over seeds, 95 % t-interval):",
            "",
        ]
        for against in controls:
            diffs = paired_differences(rows, fused, against)
            if diffs:
                lines.append(
                    f"- {fused} - {against}: "
                    + "; ".join(
                        f"{t} {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                        for t, d in diffs.items()
                    )
                    + f" ({len(next(iter(diffs.values()))['seeds'])} seeds)"
                )
        for task in tasks:
            candidates = [r for r in baselines if r["task"] == task]
            ours = next((r for r in summary if r["model"] == fused and r["task"] == task), None)
            if candidates and ours is not None:
                best = max(candidates, key=lambda r: r["auc_mean"])
                paired = paired_differences(rows, fused, best["model"]).get(task)
                interval = (
                    f", paired {paired['mean']:+.4f} [{paired['low']:+.4f}, "
                    f"{paired['high']:+.4f}] over {len(paired['seeds'])} seeds"
                    if paired
                    else ""
                )
                lines.append(
                    f"- {fused} vs best converged baseline on {task} ({best['model']}): "
                    f"{ours['auc_mean'] - best['auc_mean']:+.4f} "
                    f"({fused} std {ours['auc_std']:.4f}, {best['model']} std "
                    f"{best['auc_std']:.4f}{interval})"
                )
    return "\n".join(lines) + "\n"


# What each row is, for the notes of a table that holds it: (rows, text).
ROW_NOTES = (
    (
        ("ensemble-stacked",),
        "`ensemble-stacked` (b): per task a logistic regression on its own members' logits, "
        "fitted on the validation rows (trainable params: its fitted numbers).",
    ),
    (("ensemble-mean",), "`ensemble-mean`: the plain mean of a task's members' logits."),
    (
        ("best-member",),
        "`best-member` (a): per seed and task, the member with the best validation AUC "
        "(form: which).",
    ),
    (
        ("mlp-correction", "akf-own-task", "emm"),
        "`mlp-correction` (c), `akf-own-task` (d, `top_k: 0`) and `emm` (e) start at "
        "`ensemble-stacked` and, after training, keep a task's correction only where it "
        "beats that start on validation.",
    ),
    (("reference",), "`reference` (f): the authors' formulation."),
    (
        ("ensemble-pool-stacked",),
        "`ensemble-pool-stacked` (b'): per task a logistic regression on EVERY pool "
        "member's logit, the other tasks' members included (`ensemble_inputs: pool`, the "
        "shipped setting), fitted on the validation rows.",
    ),
    (
        ("emm-pool-stack", "mlp-correction-pool-stack", "akf-own-task-pool-stack"),
        "`emm-pool-stack` (e', the shipped configs/fusion/emm.yaml) and its controls "
        "`mlp-correction-pool-stack` (c') and `akf-own-task-pool-stack` (d') start at "
        "`ensemble-pool-stacked`; otherwise each is its unsuffixed row's setting.",
    ),
    (
        ("emm-dropout", "emm-narrow", "emm-frozen-pool"),
        "Settings of `emm`: `emm-dropout` dropout 0.2 in the stack; `emm-narrow` d_model and "
        "tower 32; `emm-frozen-pool` `component_input: none` (the pool runs as trained).",
    ),
    (
        (
            "emm-fresh-embedding",
            "mlp-correction-fresh-embedding",
            "akf-own-task-fresh-embedding",
        ),
        "`-fresh-embedding` rows: `emm`, (c) and (d) with `embedding: fresh`, a new "
        "embedding of the rows trained with the correction (in the stack it replaces the "
        "members' own embeddings as level 0's input; the MLP correction reads it beside "
        "the members' last hidden states); the ensemble start is unchanged.",
    ),
    (
        (
            "emm-fresh-pool-stack",
            "mlp-correction-fresh-pool-stack",
            "akf-own-task-fresh-pool-stack",
        ),
        "`-fresh-pool-stack` rows: the `-fresh-embedding` settings started at "
        "`ensemble-pool-stacked` (`configs/fusion/emm-fresh.yaml` is "
        "`emm-fresh-pool-stack`).",
    ),
)


def row_notes(models: set[str], funnel: bool) -> list[str]:
    """The notes on the rows a table holds (and on its baselines, if any)."""
    texts = [text for names, text in ROW_NOTES if models & set(names)]
    notes = [" ".join(texts)] if texts else []
    if any(m in BASELINES or m.removesuffix("-tuned") in BASELINES for m in models):
        notes.append(
            "Baselines: library defaults, and `<name>-tuned`: the best of one Ray Tune search "
            "(tune_spaces/baselines/default.yaml: lr, embedding dim, dropout, widths, expert "
            "counts; the trials x epochs budget of the fusion's own search, "
            "tune_spaces/default.yaml) trained to convergence like every row; form `parallel` "
            "= ESMM/AITM as their reference implementations run a non-funnel task mix (no "
            "CTR x CVR product, no calibration penalty), `funnel` = the papers' form, chosen "
            f"from the training labels (nested positives: {funnel})."
        )
    notes.append("AUC: mean ± sample std over seeds.")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["census", "ali_ccp", "aliexpress"], default="census")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=40, help="cap for pool and baselines")
    parser.add_argument("--fusion-epochs", type=int, default=30, help="cap for fused models")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--fusion-lr",
        type=float,
        default=3e-4,
        help="lr of fused models that start at the pool's ensemble (pool_residual)",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=list(fused_variants()),
        default=DEFAULT_VARIANTS,
        help="fused settings to train (none: the pool and its ensembles only; rows already "
        "in the results file are kept)",
    )
    parser.add_argument("--rows", type=int, default=300_000, help="synthetic datasets only")
    parser.add_argument(
        "--regime",
        choices=["planted", "published"],
        default="planted",
        help="synthetic datasets: planted signal, or the real dataset's rates and AUC levels",
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="census tasks (default: 2)")
    parser.add_argument(
        "--members",
        nargs="+",
        default=None,
        choices=sorted(MEMBER_HPARAMS),
        help="one member of each architecture per task (default: the dataset's pool)",
    )
    parser.add_argument("--top-k", type=int, default=None, help="override the fused top_k")
    parser.add_argument(
        "--split-features",
        action="store_true",
        help="census: income members see employment fields only, never-married members "
        "the person and household fields only",
    )
    parser.add_argument("--baselines", nargs="*", choices=list(BASELINES), default=list(BASELINES))
    parser.add_argument("--name", default=None, help="results name (default: the dataset)")
    parser.add_argument(
        "--pool-from", default=None, help="reuse the trained pools of another results name"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machines: 1)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "emm-bench" / "fusion",
        help="prepared data, pool checkpoints, Tune's files (scratch)",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=RUNS, help="per-run result lines and search caches"
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--render-only", action="store_true", help="rewrite the tables only")
    parser.add_argument(
        "--fuse-on-validation",
        action="store_true",
        help="diagnosis: fused rows train on half the validation split (rows the pool never "
        "saw) and early-stop on the other half",
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="also search each baseline with Ray Tune (--baseline-search) and train the best",
    )
    parser.add_argument(
        "--baseline-search", type=Path, default=REPO / "tune_spaces/baselines/default.yaml"
    )
    args = parser.parse_args()
    if args.regime == "published" and args.dataset == "census":
        parser.error("--regime published is a synthetic setting of ali_ccp and aliexpress")
    if args.split_features and (args.dataset != "census" or args.tasks):
        parser.error("--split-features is defined for census income / never_married only")
    fresh = [v for v in args.variants if fused_variants()[v][1].embedding == "fresh"]
    if args.split_features and fresh:
        parser.error(f"--split-features: {fresh} learn a fresh embedding over every field")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    tasks = tuple(args.tasks) if args.tasks else None
    prepared = prepare(args.dataset, args.rows, args.work_dir, tasks, args.regime)
    name = args.name or "_".join(
        [args.dataset]
        + (["published"] if args.regime == "published" else [])
        + (["split_features"] if args.split_features else [])
    )
    members = (
        tuple((a, t) for t in range(len(prepared.schema.tasks)) for a in args.members)
        if args.members
        else POOLS[args.dataset]
    )
    top_k = {} if args.top_k is None else {"top_k": args.top_k}
    variants = {
        v: (
            kind,
            config.model_copy(update=top_k)
            if config.correction == "akf" and config.top_k
            else config,
        )
        for v, (kind, config) in fused_variants().items()
        if v in args.variants
    }
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        num_threads=args.threads,
    )
    results = args.runs_dir / f"{name}.jsonl"
    correction_train = train.model_copy(update={"lr": args.fusion_lr, "epochs": args.fusion_epochs})
    bench = Bench(prepared, train, correction_train, results, args.work_dir)
    bench.pool_name = args.pool_from or name
    if args.fuse_on_validation:
        bench.fuse_on_validation_halves()
    if args.split_features:
        bench.split_features()
    if not args.render_only:
        for seed in args.seeds:
            run_seed(bench, seed, members, variants, args.baselines)
        if args.tuned:
            searched = searched_baselines(
                bench, args.baseline_search, args.work_dir, args.baselines
            )
            for seed in args.seeds:
                run_tuned(bench, seed, searched)
    source = (
        "real UCI Census-Income (KDD) training file; validation and test carved from it "
        "(10 % each, stratified, seed 0)"
        if args.dataset == "census"
        else f"SYNTHETIC data with the {args.dataset} schema ({args.rows} rows, seeded "
        "generator with shared latent structure): not comparable with published numbers"
    )
    if args.regime == "published":
        generator = SyntheticGenerator(args.dataset, 0, regime="published")
        published = generator.spec.published
        ceiling = ", ".join(
            f"{task} {auc:.2f}"
            for task, auc in zip(prepared.schema.task_names, published.oracle_aucs, strict=True)
        )
        source += (
            f"; regime `published`: {published.source}; the generating probabilities' own "
            f"AUC (the ceiling of any model) is {ceiling}"
        )
    split = prepared.split_info["splits"]
    pool_text = ", ".join(f"{a} for {prepared.schema.task_names[p]}" for a, p in members)
    notes = [
        f"Data: {source}. Rows: train {split['train']['rows']}, validation "
        f"{split['validation']['rows']}, test {split['test']['rows']}.",
        f"Training: every model to convergence, early stopping on mean validation AUC "
        f"(patience {args.patience}), best weights restored; epoch cap {args.epochs} for pool "
        f"members and baselines (Adam lr {args.lr}), {args.fusion_epochs} for fused models "
        f"(lr {args.fusion_lr}, validated before training: best epoch 0 = the untrained "
        f"start); batch {args.batch_size}; {args.threads} torch thread(s) per process on a "
        "shared 2-core CPU machine (train s is wall time, load included). A row whose best "
        "epoch is within `patience` of its cap on any seed is marked failed.",
        f"Pool: {pool_text} (embed 16{POOL_NOTES.get(args.dataset, '')}); every fused row "
        "of a seed fuses that seed's pool.",
    ]
    if args.split_features:
        notes.append(
            "SPLIT-FEATURES POOL: the income members were built on the employment and money "
            f"fields only ({', '.join(EMPLOYMENT_FIELDS)}); the never-married members on "
            "every other field (the person and household) only (`ignore_fields`: those "
            "inputs read as the OOV bucket / 0). The fused rows use the pool's own embeddings "
            "(no fresh embedding), so they see only what their members see; the baselines "
            "of fusion_census.md see every field."
        )
    if args.fuse_on_validation:
        notes.append(
            "DIAGNOSIS RUN: the fused rows trained on a random half of the validation split "
            "(rows the frozen pool never saw) and early-stopped on the other half, which also "
            "fitted their stacking; their `val AUC` is therefore not held out, test AUC is. "
            f"Pools reused from `{bench.pool_name}` (same seeds)."
        )
    title = f"Fusion benchmark: {args.dataset}" + (
        "" if args.dataset == "census" else f" (synthetic, {args.regime} regime)"
    )
    output = args.output or REPO / "benchmarks" / "results" / f"fusion_{name}.md"
    rows = with_best_members(read_rows(results))
    notes += row_notes({r["model"] for r in rows}, bench.funnel)
    output.write_text(render(rows, title, notes))
    output.with_suffix(".json").write_text(json.dumps(summary_rows(rows), indent=1) + "\n")
    print(output.read_text())


if __name__ == "__main__":
    main()
