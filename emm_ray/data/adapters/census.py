"""UCI Census-Income (KDD): `census-income.data` / `.test`, 42 fields, no header.

Fields are separated by `, ` (no value contains a comma), `?` marks a missing value
and is kept as its own category, and the label ends with a period. The survey
`instance_weight` is dropped as UCI advises, and the class column `income_label` is
never a feature.

Tasks are chosen from `TASK_DEFINITIONS` (`DatasetConfig.tasks`); the default is the
MMoE paper's pair, `income` (`label == "50000+."`) and `never_married`
(`marital_stat == "Never married"`), which leaves 7 dense + 32 sparse = 39 features.
Every chosen task takes its source columns, and the columns that restate them, out of
the features (docs/census_tasks.md gives each choice and the measured rates); every
other column stays a feature. Heavy-tailed money columns are log1p-scaled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from emm_ray.data.adapters.csvread import CsvChunk, iter_csv
from emm_ray.data.layout import DatasetLayout, DenseSpec
from emm_ray.data.schema import Task

COLUMNS: tuple[str, ...] = (
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income_label",
)

INCOME_COLUMN = "income_label"
DROPPED = ("instance_weight",)
INCOME_POSITIVE, INCOME_NEGATIVE = "50000+.", "- 50000."
BACHELORS_OR_HIGHER = (
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)

DENSE: tuple[DenseSpec, ...] = (
    DenseSpec("age"),
    DenseSpec("wage_per_hour", "log1p"),
    DenseSpec("capital_gains", "log1p"),
    DenseSpec("capital_losses", "log1p"),
    DenseSpec("dividends_from_stocks", "log1p"),
    DenseSpec("num_persons_worked_for_employer"),
    DenseSpec("weeks_worked_in_year"),
)


@dataclass(frozen=True)
class CensusTask:
    """A label computed from raw columns; `removes` leave the features when it is chosen.

    `removes` holds the label's source columns and the columns that restate them (e.g.
    `citizenship` says whether a person was born abroad).
    """

    task: Task
    removes: tuple[str, ...]
    label: Callable[[CsvChunk], pa.Array]


SELF_EMPLOYED = ("Self-employed-incorporated", "Self-employed-not incorporated")


def _is(column: str, *values: str) -> Callable[[CsvChunk], pa.Array]:
    return lambda chunk: _int8(pc.is_in(chunk.strings(column), value_set=pa.array(values)))


def _income(chunk: CsvChunk) -> pa.Array:
    return chunk.label(INCOME_COLUMN, INCOME_POSITIVE, INCOME_NEGATIVE)


def _worked_all_year(chunk: CsvChunk) -> pa.Array:
    return _int8(pc.equal(chunk.floats("weeks_worked_in_year"), 52.0))


def _capital_income(chunk: CsvChunk) -> pa.Array:
    gains = pc.greater(chunk.floats("capital_gains"), 0.0)
    return _int8(pc.or_(gains, pc.greater(chunk.floats("dividends_from_stocks"), 0.0)))


def _foreign_born(chunk: CsvChunk) -> pa.Array:
    return _int8(pc.not_equal(chunk.strings("country_of_birth_self"), "United-States"))


def _int8(mask: pa.Array) -> pa.Array:
    return pc.cast(mask, pa.int8())


TASK_DEFINITIONS: dict[str, CensusTask] = {
    t.task.name: t
    for t in (
        CensusTask(
            Task(name="income", description="income > 50K (label column == '50000+.')"),
            (INCOME_COLUMN,),
            _income,
        ),
        CensusTask(
            Task(name="never_married", description="marital_stat == 'Never married'"),
            ("marital_stat",),
            _is("marital_stat", "Never married"),
        ),
        CensusTask(
            Task(
                name="education_bachelors",
                description="education is a bachelor's, master's, professional or doctoral degree",
            ),
            ("education", "enroll_in_edu_inst_last_wk"),
            _is("education", *BACHELORS_OR_HIGHER),
        ),
        CensusTask(
            Task(name="worked_all_year", description="weeks_worked_in_year == 52"),
            ("weeks_worked_in_year",),
            _worked_all_year,
        ),
        CensusTask(
            Task(
                name="capital_income", description="capital_gains > 0 or dividends_from_stocks > 0"
            ),
            ("capital_gains", "capital_losses", "dividends_from_stocks"),
            _capital_income,
        ),
        CensusTask(
            Task(name="foreign_born", description="country_of_birth_self != 'United-States'"),
            ("country_of_birth_self", "citizenship"),
            _foreign_born,
        ),
        CensusTask(
            Task(
                name="full_time",
                description="full_or_part_time_employment_stat == 'Full-time schedules'",
            ),
            ("full_or_part_time_employment_stat",),
            _is("full_or_part_time_employment_stat", "Full-time schedules"),
        ),
        CensusTask(
            Task(
                name="self_employed",
                description="class_of_worker is 'Self-employed-incorporated' or "
                "'Self-employed-not incorporated'",
            ),
            ("class_of_worker", "own_business_or_self_employed"),
            _is("class_of_worker", *SELF_EMPLOYED),
        ),
        CensusTask(
            Task(
                name="school_enrolled",
                description="enroll_in_edu_inst_last_wk is 'High school' or "
                "'College or university'",
            ),
            ("enroll_in_edu_inst_last_wk",),
            _is("enroll_in_edu_inst_last_wk", "High school", "College or university"),
        ),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASK_DEFINITIONS)
DEFAULT_TASKS: tuple[str, ...] = ("income", "never_married")


@cache
def task_layout(tasks: tuple[str, ...] = DEFAULT_TASKS) -> DatasetLayout:
    """Features and tasks for a choice of tasks (names already checked, in the given order).

    A column is a feature unless it is dropped, the class column, or removed by any
    chosen task.
    """
    chosen = [TASK_DEFINITIONS[name] for name in tasks]
    removed = {INCOME_COLUMN, *DROPPED}.union(*(t.removes for t in chosen))
    dense = tuple(d for d in DENSE if d.name not in removed)
    dense_names = {d.name for d in DENSE}
    return DatasetLayout(
        dataset="census",
        sparse=tuple(c for c in COLUMNS if c not in removed and c not in dense_names),
        dense=dense,
        tasks=tuple(t.task for t in chosen),
    )


LAYOUT = task_layout()


def layout(path: Path, tasks: tuple[str, ...] = DEFAULT_TASKS) -> DatasetLayout:
    """Census has one layout per choice of tasks, whatever the file."""
    return task_layout(tuple(tasks))


def iter_chunks(path: Path, tasks: tuple[str, ...] = DEFAULT_TASKS) -> Iterator[pa.Table]:
    """Validated raw tables (see `DatasetLayout.raw_schema`), in file order."""
    fields = task_layout(tuple(tasks))
    schema = fields.raw_schema()
    for chunk in iter_csv(Path(path), list(COLUMNS), header=False, delimiter=",", trim=True):
        columns = {name: chunk.strings(name) for name in fields.sparse}
        columns |= {name: chunk.floats(name) for name in fields.dense_names}
        columns |= {name: TASK_DEFINITIONS[name].label(chunk) for name in fields.task_names}
        yield pa.table(columns, schema=schema)
