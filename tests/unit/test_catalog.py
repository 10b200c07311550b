"""Loading a project folder: the starter validates; every problem is reported at once, with
file and line; and the CLI's ``init`` and ``validate``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from charter.catalog import Tier, load_project
from charter.cli import app
from charter.errors import CatalogError, Problem

INTEGRATION = "integrations/deal-to-erp-order.yaml"
CRM = "systems/crm.yaml"
ERP = "systems/erp.yaml"
ORDER = "entities/order.yaml"
TEAMS = "teams.yaml"


def edit(project: Path, file: str, old: str, new: str) -> None:
    path = project / file
    text = path.read_text()
    assert old in text, f"{old!r} is not in {file}"
    path.write_text(text.replace(old, new, 1))


def problems(project: Path) -> list[Problem]:
    with pytest.raises(CatalogError) as caught:
        load_project(project)
    assert caught.value.status == 422
    return caught.value.problems


def found(project: Path) -> set[tuple[str, int | None]]:
    return {(p.file, p.line) for p in problems(project)}


def only(project: Path) -> Problem:
    [problem] = problems(project)
    return problem


def test_the_starter_project_is_valid(project_dir: Path) -> None:
    project = load_project(project_dir)
    assert project.name == "order-to-cash"
    assert set(project.teams) == {"sales-ops", "finance-ops", "integration-platform"}
    assert set(project.systems) == {"crm", "erp"}
    assert set(project.mappings) == {("crm-deal-to-order", 1), ("order-to-erp", 1)}
    integration = project.integrations["deal-to-erp-order"]
    assert (integration.owner, integration.tier) == ("sales-ops", Tier.REVENUE_CRITICAL)
    assert (integration.slo.latency, integration.slo.window) == (60.0, 28 * 86400.0)
    assert (integration.retry.initial_backoff, integration.retry.max_backoff) == (0.2, 10.0)
    assert project.integrations_for("crm", "deal.closed") == [integration]
    # Schemas named by file are loaded relative to the YAML that names them.
    assert project.event_schema("crm", "deal.closed")["title"] == "CRM deal.closed payload"
    assert "order_id" in project.entity_schema("order", 1)["properties"]


# syntax and documents


def test_bad_yaml_syntax_names_file_and_line(project_dir: Path) -> None:
    edit(project_dir, CRM, "role: engagement", "role: [engagement")
    first, *_ = problems(project_dir)
    assert (first.file, first.line) == (CRM, 3)
    assert first.message.startswith("invalid YAML")


def test_a_duplicate_key_names_the_second_one(project_dir: Path) -> None:
    edit(project_dir, CRM, "role: engagement", "role: engagement\nrole: record")
    first, *_ = problems(project_dir)
    assert (first.file, first.line) == (CRM, 4)
    assert "duplicate key 'role'" in first.message


def test_an_unknown_kind_names_the_kinds_there_are(project_dir: Path) -> None:
    edit(project_dir, CRM, "kind: System", "kind: Sistem")
    first, *_ = problems(project_dir)
    assert (first.file, first.line) == (CRM, 1)
    assert first.message == "unknown kind 'Sistem'"
    assert first.fix is not None and "System" in first.fix


def test_an_unknown_field_is_named(project_dir: Path) -> None:
    edit(project_dir, CRM, "role: engagement", "role: engagement\nownr: sales-ops")
    problem, *_ = problems(project_dir)
    assert (problem.file, problem.line) == (CRM, 4)
    assert problem.message == "unknown field 'ownr'"


# governance: owner, tier and SLO are required


@pytest.mark.parametrize(
    ("field", "old"),
    [
        ("owner", "owner: sales-ops\n"),
        ("tier", "tier: revenue-critical\n"),
        ("slo", "slo:\n  objective: 99.9\n  latency: 60s\n  window: 28d\n"),
    ],
)
def test_an_integration_without_owner_tier_or_slo_does_not_validate(
    project_dir: Path, field: str, old: str
) -> None:
    edit(project_dir, INTEGRATION, old, "")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 1)
    assert problem.message == f"'{field}' is required"
    assert problem.fix == f"add '{field}:' to the document"


def test_all_three_missing_are_named_separately(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "owner: sales-ops\n", "")
    edit(project_dir, INTEGRATION, "tier: revenue-critical\n", "")
    edit(project_dir, INTEGRATION, "slo:\n  objective: 99.9\n  latency: 60s\n  window: 28d\n", "")
    assert sorted(p.message for p in problems(project_dir)) == [
        "'owner' is required",
        "'slo' is required",
        "'tier' is required",
    ]


def test_an_unknown_tier_lists_the_tiers(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "tier: revenue-critical", "tier: urgent")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 6)
    assert "'urgent'" in problem.message
    assert "revenue-critical" in problem.message


def test_an_unknown_owner_team(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "owner: sales-ops", "owner: nobody")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 4)
    assert problem.message == "owner team 'nobody' is not defined"


# references


def test_an_unknown_target_system(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "  - system: erp", "  - system: sap")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 12)
    assert problem.message == "system 'sap' is not defined"


def test_an_unknown_source_system(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "source: {system: crm", "source: {system: hubspot")
    assert (INTEGRATION, 8) in found(project_dir)
    assert any(p.message == "system 'hubspot' is not defined" for p in problems(project_dir))


def test_an_unknown_source_event(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "event: deal.closed", "event: deal.lost")
    messages = {(p.line, p.message) for p in problems(project_dir)}
    assert (8, "system 'crm' declares no event 'deal.lost'") in messages


def test_an_unknown_entity_version(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "entity: order@1", "entity: order@2")
    messages = {(p.line, p.message) for p in problems(project_dir)}
    assert (9, "entity order@2 is not defined") in messages


def test_an_unknown_mapping(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "mapping: crm-deal-to-order@1", "mapping: deal-to-order@3")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 10)
    assert problem.message == "mapping deal-to-order@3 is not defined"


def test_an_unknown_target_mapping(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "mapping: order-to-erp@1", "mapping: order-to-erp@2")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 13)
    assert problem.message == "mapping order-to-erp@2 is not defined"


def test_an_ingress_mapping_from_another_source_is_refused(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "mapping: crm-deal-to-order@1", "mapping: order-to-erp@1")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 10)
    assert "not crm/deal.closed to order@1" in problem.message


def test_a_target_mapping_to_another_system_is_refused(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "mapping: order-to-erp@1", "mapping: crm-deal-to-order@1")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 13)
    assert problem.message == "mapping crm-deal-to-order@1 does not map order@1 to system 'erp'"


def test_a_mapping_naming_an_unknown_event_or_entity(project_dir: Path) -> None:
    edit(project_dir, "mappings/crm-deal-to-order.yaml", "event: deal.closed", "event: deal.won")
    edit(
        project_dir,
        "mappings/order-to-erp.yaml",
        "{entity: order, version: 1}",
        "{entity: ord, version: 1}",
    )
    got = {(p.file, p.line, p.message) for p in problems(project_dir)}
    assert (
        "mappings/crm-deal-to-order.yaml",
        5,
        "system 'crm' declares no event 'deal.won'",
    ) in got
    assert ("mappings/order-to-erp.yaml", 5, "entity ord@1 is not defined") in got


def test_a_target_system_without_a_connector(project_dir: Path) -> None:
    edit(
        project_dir,
        ERP,
        "connector:\n  kind: http\n  base_url: ${CHARTER_ERP_URL:-http://127.0.0.1:8102}\n"
        "  timeout: 5s\n  connect_timeout: 2s\n",
        "",
    )
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 12)
    assert problem.message == "target system 'erp' has no connector"


# schemas


def test_an_invalid_json_schema_is_reported(project_dir: Path) -> None:
    edit(project_dir, ORDER, "  type: object\n  required", "  type: objekt\n  required")
    got = problems(project_dir)
    schema = [p for p in got if "invalid JSON Schema" in p.message]
    assert [(p.file, p.line) for p in schema] == [(ORDER, 13)]
    assert "'objekt'" in schema[0].message


def test_an_invalid_json_schema_is_the_only_problem_reported(project_dir: Path) -> None:
    edit(project_dir, ORDER, "  type: object\n  required", "  type: objekt\n  required")
    assert "invalid JSON Schema" in only(project_dir).message


def test_a_schema_file_that_is_not_there(project_dir: Path) -> None:
    edit(project_dir, CRM, "../schemas/crm-deal-closed.json", "../schemas/deal.json")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (CRM, 9)
    assert problem.message == "schema file '../schemas/deal.json' not found"


def test_a_schema_file_that_is_not_json(project_dir: Path) -> None:
    (project_dir / "schemas" / "crm-deal-closed.json").write_text("{not json")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (CRM, 9)
    assert problem.message.startswith("cannot read schema '../schemas/crm-deal-closed.json'")


# names and values


def test_a_name_defined_twice_points_at_the_first(project_dir: Path) -> None:
    (project_dir / "teams2.yaml").write_text("kind: Team\nname: sales-ops\n")
    problem = only(project_dir)
    assert (problem.file, problem.line) == ("teams2.yaml", 2)
    assert problem.message == "Team 'sales-ops' is defined twice"
    assert problem.fix == "the first is at teams.yaml:1"


def test_a_bad_duration(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "latency: 60s", "latency: soon")
    problem = only(project_dir)
    assert (problem.file, problem.line) == (INTEGRATION, 21)
    assert "'slo.latency'" in problem.message
    assert "'soon' is not a duration" in problem.message


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), (45, 45.0)],
)
def test_durations_in_every_unit(project_dir: Path, written: object, seconds: float) -> None:
    edit(project_dir, INTEGRATION, "latency: 60s", f"latency: {written}")
    assert load_project(project_dir).integrations["deal-to-erp-order"].slo.latency == seconds


# environment variables


def test_a_variable_with_a_default_uses_the_environment_when_set(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTER_ERP_URL", "https://erp.example.com/")
    connector = load_project(project_dir).systems["erp"].connector
    assert connector is not None and connector.base_url == "https://erp.example.com"


def test_a_variable_with_a_default_falls_back_when_unset(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARTER_ERP_URL", raising=False)
    connector = load_project(project_dir).systems["erp"].connector
    assert connector is not None and connector.base_url == "http://127.0.0.1:8102"


def test_a_variable_without_a_default_is_expanded_inside_a_value(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit(project_dir, ERP, "${CHARTER_ERP_URL:-http://127.0.0.1:8102}", "http://${ERP_HOST}:81")
    monkeypatch.setenv("ERP_HOST", "erp.internal")
    connector = load_project(project_dir).systems["erp"].connector
    assert connector is not None and connector.base_url == "http://erp.internal:81"


def test_an_unset_variable_without_a_default_names_it_and_the_line(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit(project_dir, ERP, "${CHARTER_ERP_URL:-http://127.0.0.1:8102}", "${ERP_BASE_URL}")
    monkeypatch.delenv("ERP_BASE_URL", raising=False)
    first, *_ = problems(project_dir)
    assert (first.file, first.line) == (ERP, 9)
    assert "environment variable ERP_BASE_URL is not set" in first.message


def test_an_unset_variable_is_not_called_a_syntax_error(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit(project_dir, ERP, "${CHARTER_ERP_URL:-http://127.0.0.1:8102}", "${ERP_BASE_URL}")
    monkeypatch.delenv("ERP_BASE_URL", raising=False)
    first, *_ = problems(project_dir)
    assert "invalid YAML" not in first.message
    assert first.fix is not None and "ERP_BASE_URL" in first.fix


# the whole folder


def test_a_folder_without_charter_yaml_is_not_a_project(tmp_path: Path) -> None:
    problem = only(tmp_path)
    assert (problem.file, problem.line) == (str(tmp_path), None)
    assert "no charter.yaml here" in problem.message
    assert problem.fix is not None and "charter init" in problem.fix


def test_every_problem_is_reported_at_once(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "owner: sales-ops", "owner: nobody")
    edit(project_dir, INTEGRATION, "latency: 60s", "latency: soon")
    edit(project_dir, CRM, "../schemas/crm-deal-closed.json", "../schemas/deal.json")
    edit(project_dir, TEAMS, "name: integration-platform\n", "name: integration-platform\nx: 1\n")
    (project_dir / "extra.yaml").write_text("kind: Workflow\nname: w\n")
    assert found(project_dir) == {
        (INTEGRATION, 21),
        (CRM, 9),
        (TEAMS, 13),
        ("extra.yaml", 1),
    }
    # The owner is only checked once the document itself is valid.
    edit(project_dir, INTEGRATION, "latency: soon", "latency: 60s")
    assert (INTEGRATION, 4) in found(project_dir)


def test_hidden_folders_are_not_read(project_dir: Path) -> None:
    (project_dir / ".charter").mkdir()
    (project_dir / ".charter" / "junk.yaml").write_text("kind: Nonsense\n")
    assert load_project(project_dir).name == "order-to-cash"


# the CLI


def test_cli_validate_accepts_the_starter(project_dir: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "-p", str(project_dir)])
    assert result.exit_code == 0, result.output
    assert "Project order-to-cash is valid" in result.output
    assert "3 teams, 2 systems, 1 entities, 2 mappings, 1 integrations" in result.output


def test_cli_validate_lists_every_problem_as_file_line(project_dir: Path) -> None:
    edit(project_dir, INTEGRATION, "owner: sales-ops", "owner: nobody")
    edit(project_dir, CRM, "../schemas/crm-deal-closed.json", "../schemas/deal.json")
    result = CliRunner().invoke(app, ["validate", "-p", str(project_dir)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert f"{CRM}:9: schema file '../schemas/deal.json' not found" in lines[0]
    assert lines[1].startswith(f"{INTEGRATION}:4: owner team 'nobody' is not defined")
    assert lines[-1] == f"error: 2 problem(s) in {project_dir}"


def test_cli_init_writes_a_project_that_validates(tmp_path: Path) -> None:
    target = tmp_path / "shop"
    runner = CliRunner()
    created = runner.invoke(app, ["init", str(target)])
    assert created.exit_code == 0, created.output
    assert "Created project order-to-cash" in created.output
    assert (target / "charter.yaml").is_file()
    validated = runner.invoke(app, ["validate", "-p", str(target)])
    assert validated.exit_code == 0, validated.output
    assert load_project(target).name == "order-to-cash"


def test_cli_init_refuses_a_folder_that_has_a_project(project_dir: Path) -> None:
    before = (project_dir / "teams.yaml").read_text()
    (project_dir / "teams.yaml").write_text(before + "# mine\n")
    result = CliRunner().invoke(app, ["init", str(project_dir)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {project_dir / 'charter.yaml'} already exists; choose an empty folder"
    ]
    assert (project_dir / "teams.yaml").read_text() == before + "# mine\n"
