"""UCI Census-Income (KDD): `census-income.data` / `.test`, 42 fields, no header.

Fields are separated by `, ` (no value contains a comma), `?` marks a missing value
and is kept as its own category, and the label ends with a period. As in the MMoE
paper: task `income` is `label == "50000+."`, task `never_married` is
`marital_stat == "Never married"`; marital status is therefore a label source, not a
feature, and the survey `instance_weight` is dropped as UCI advises. That leaves
7 dense + 32 sparse = 39 features. Heavy-tailed money columns are log1p-scaled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from emm_ray.data.adapters.csvread import iter_csv
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
MARITAL_COLUMN = "marital_stat"
DROPPED = ("instance_weight",)
INCOME_POSITIVE, INCOME_NEGATIVE = "50000+.", "- 50000."

DENSE: tuple[DenseSpec, ...] = (
    DenseSpec("age"),
    DenseSpec("wage_per_hour", "log1p"),
    DenseSpec("capital_gains", "log1p"),
    DenseSpec("capital_losses", "log1p"),
    DenseSpec("dividends_from_stocks", "log1p"),
    DenseSpec("num_persons_worked_for_employer"),
    DenseSpec("weeks_worked_in_year"),
)

TASKS: tuple[Task, ...] = (
    Task(name="income", description="income > 50K (label column == '50000+.')"),
    Task(name="never_married", description="marital_stat == 'Never married'"),
)

_NOT_FEATURES = {d.name for d in DENSE} | {INCOME_COLUMN, MARITAL_COLUMN, *DROPPED}
LAYOUT = DatasetLayout(
    dataset="census",
    sparse=tuple(c for c in COLUMNS if c not in _NOT_FEATURES),
    dense=DENSE,
    tasks=TASKS,
)


def layout(path: Path) -> DatasetLayout:
    """Census has one layout whatever the file."""
    return LAYOUT


def iter_chunks(path: Path) -> Iterator[pa.Table]:
    """Validated raw tables (see `DatasetLayout.raw_schema`), in file order."""
    schema = LAYOUT.raw_schema()
    for chunk in iter_csv(Path(path), list(COLUMNS), header=False, delimiter=",", trim=True):
        columns = {name: chunk.strings(name) for name in LAYOUT.sparse}
        columns |= {name: chunk.floats(name) for name in LAYOUT.dense_names}
        columns["income"] = chunk.label(INCOME_COLUMN, INCOME_POSITIVE, INCOME_NEGATIVE)
        never = pc.equal(chunk.strings(MARITAL_COLUMN), "Never married")
        columns["never_married"] = pc.cast(never, pa.int8())
        yield pa.table(columns, schema=schema)
