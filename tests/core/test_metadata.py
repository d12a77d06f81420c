import pytest

from sqlgate.errors import MetadataError
from sqlgate.metadata import dataset_to_dict, load_dataset_yaml, parse_dataset, parse_dataset_text

from tests.core.conftest import people_metadata

VALID = {
    "dataset": "clinic",
    "tables": {"patients": {"privacy_unit": "id", "columns": {
        "id": "int", "age": {"type": "int", "lower": 0, "upper": 120}}}},
}


def _with(path, value):
    import copy
    doc = copy.deepcopy(VALID)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()


def test_valid_metadata_parses_with_defaults():
    meta = parse_dataset(VALID)
    table = meta.table("patients")
    assert table.privacy_unit == "id"
    assert table.max_groups_per_unit == 1 and table.max_rows_per_group == 1
    assert table.column("age").lower == 0 and table.column("age").upper == 120
    assert meta.mechanism == "laplace"


@pytest.mark.parametrize("path,value,field", [
    ("dataset", "bad name!", "dataset"),
    ("tables", {}, "tables"),
    ("tables.patients.privacy_unit", "missing", "tables.patients.privacy_unit"),
    ("tables.patients.privacy_unit", _DELETE, "tables.patients.privacy_unit"),
    ("tables.patients.columns.age", {"type": "int", "lower": 5, "upper": 1}, "tables.patients.columns.age.upper"),
    ("tables.patients.columns.age", {"type": "int", "lower": 5}, "tables.patients.columns.age.upper"),
    ("tables.patients.columns.age", {"type": "integer"}, "tables.patients.columns.age.type"),
    ("tables.patients.columns.age", {"type": "string", "lower": 0, "upper": 1}, "tables.patients.columns.age.lower"),
    ("tables.patients.columns.age", {"type": "int", "lower": 0, "upper": float("inf")}, "tables.patients.columns.age.upper"),
    ("tables.patients.columns.age", {"type": "int", "public_keys": [1, 1]}, "tables.patients.columns.age.public_keys"),
    ("tables.patients.columns.age", {"type": "int", "public_keys": ["a"]}, "tables.patients.columns.age.public_keys"),
    ("tables.patients.max_groups_per_unit", 0, "tables.patients.max_groups_per_unit"),
    ("tables.patients.max_rows_per_group", 1.5, "tables.patients.max_rows_per_group"),
    ("tables.patients.truncate_rows_per_unit", -1, "tables.patients.truncate_rows_per_unit"),
    ("tables.patients.colums", {}, "tables.patients.colums"),
    ("budget", {"epsilon": -1}, "budget.epsilon"),
    ("budget", {"epsilon": 1, "delta": 1}, "budget.delta"),
    ("query", {"mechanism": "exponential"}, "query.mechanism"),
])
def test_invalid_metadata_names_the_field(path, value, field):
    with pytest.raises(MetadataError) as err:
        parse_dataset(_with(path, value))
    assert err.value.field == field
    assert field in err.value.message


def test_invalid_yaml_is_a_metadata_error():
    with pytest.raises(MetadataError):
        parse_dataset_text("dataset: [unclosed")
    with pytest.raises(MetadataError) as err:
        parse_dataset_text("- just\n- a list\n")
    assert err.value.field == "<document>"


def test_round_trip_through_dict():
    meta = people_metadata(truncate_rows_per_unit=3)
    assert parse_dataset(dataset_to_dict(meta)) == meta


def test_yaml_file_sources_are_relative_to_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.csv").write_text("id,age\n1,30\n")
    (tmp_path / "meta.yaml").write_text(
        "dataset: clinic\n"
        "tables:\n"
        "  patients:\n"
        "    source: data/p.csv\n"
        "    privacy_unit: id\n"
        "    columns: {id: int, age: {type: int, lower: 0, upper: 120}}\n")
    meta = load_dataset_yaml(tmp_path / "meta.yaml")
    assert meta.table("patients").source == str((tmp_path / "data" / "p.csv").resolve())
