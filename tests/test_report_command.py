"""`mcomp report`: a saved report rendered again (table at 80 and 120 columns, Markdown,
JSON), two runs compared with --fail-on (exit codes, the grammar's errors) and --plot."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from mcomp.cli.main import cli

SAMPLE = Path(__file__).parent / "data" / "reports" / "quickstart.json"


@pytest.fixture
def sample() -> dict:
    return json.loads(SAMPLE.read_text())


def rendered(report: dict, width: int) -> str:
    from mcomp.cli.render import render_report

    buffer = io.StringIO()
    render_report(report, Console(file=buffer, width=width, color_system=None))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


@pytest.mark.parametrize("width", [80, 120])
def test_table_fits_the_width_and_keeps_every_column(sample, width, golden):
    text = rendered(sample, width)
    golden(f"report_{width}.txt", text)
    assert max(len(line) for line in text.splitlines()) <= width
    for header in ("params", "sparse", "size", "deflated", "MACs", "accuracy", "ms b1", "ms b32"):
        assert header in text
    assert "+0.00556" in text and "…" not in text  # the metric delta is not cut
    assert "×1.3" in text and "≈" in text  # int8 at b32 resolved, the rest within the spread


def test_narrow_terminal_stacks_two_tables(sample):
    def tables(text: str) -> int:
        return sum(line.split()[:1] == ["stage"] for line in text.splitlines())

    assert tables(rendered(sample, 80)) == 2
    assert tables(rendered(sample, 120)) == 1


def test_busy_machine_is_said_under_the_table(sample):
    sample["latency"]["busy_warning"] = "other processes used 40% of the 2 CPUs"
    assert "warning: other processes used 40% of the 2 CPUs" in rendered(sample, 120)


def test_uncertain_min_speedup_says_so(sample):
    sample["constraints"].append(
        {
            "name": "min_speedup",
            "limit": 1.3,
            "value": 1.27,
            "ok": False,
            "estimate": 1.31,
            "interval": [1.27, 1.34],
            "certainty": "uncertain",
            "rounds_meeting": "3/5",
        }
    )
    text = rendered(sample, 120)
    assert "BROKEN min_speedup: 1.27 (limit 1.3; estimate 1.31 in 1.27–1.34, uncertain" in text
    assert "3/5 rounds within the limit" in text


def test_report_rerenders_json_and_markdown(sample):
    runner = CliRunner()
    as_json = runner.invoke(cli, ["report", str(SAMPLE), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output) == sample
    markdown = runner.invoke(cli, ["report", str(SAMPLE), "--md"])
    assert markdown.exit_code == 0
    assert markdown.output.startswith("### mcomp: ok — recipes/quickstart.yaml")
    assert "| quantize |" in markdown.output and "≈" in markdown.output
    table = runner.invoke(cli, ["report", str(SAMPLE)])
    assert table.exit_code == 0 and "before/after each stage" in table.output


def _worse(sample: dict) -> dict:
    """The sample with a 0.01 lower metric and a 6 % larger file."""
    new = copy.deepcopy(sample)
    final = new["final"]["metrics"]
    final["metric"] -= 0.01
    final["size_bytes"] = round(final["size_bytes"] * 1.06)
    return new


def test_diff_exit_code_follows_the_conditions(sample, tmp_path):
    new = tmp_path / "new.json"
    new.write_text(json.dumps(_worse(sample)))
    runner = CliRunner()

    def run(conditions: str):
        return runner.invoke(
            cli, ["report", str(SAMPLE), str(new), "--fail-on", conditions, "--json"]
        )

    broken = run("metric<-0.005,size>+5%")
    assert broken.exit_code == 1, broken.output
    result = json.loads(broken.output)
    assert result["ok"] is False and [c["broken"] for c in result["conditions"]] == [True, True]
    size = result["conditions"][1]
    assert size["unit"] == "%" and size["change"] == pytest.approx(6.0, abs=0.01)
    assert result["figures"]["metric"]["change"] == pytest.approx(-0.01)
    held = run("metric<-0.02, size>+10%")
    assert held.exit_code == 0 and json.loads(held.output)["ok"] is True
    assert run("size>=+6%").exit_code == 1 and run("size>+6.1%").exit_code == 0


def test_diff_table_shows_old_new_and_the_change(sample, tmp_path, golden):
    new = tmp_path / "new.json"
    new.write_text(json.dumps(_worse(sample)))
    result = CliRunner().invoke(
        cli, ["report", str(SAMPLE), str(new), "--fail-on", "metric<-0.005"]
    )
    assert result.exit_code == 1
    lines = result.output.replace(str(SAMPLE), "OLD.json").replace(str(new), "NEW.json")
    golden("report_diff.txt", "\n".join(line.rstrip() for line in lines.splitlines()) + "\n")
    assert "BROKEN metric<-0.005: change -0.01" in result.output


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ("siz>+5%", "unknown figure 'siz' (did you mean 'size'?)"),
        ("size=+5%", "use <, <=, > or >="),
        ("size+5%", "expected FIGURE<CHANGE or FIGURE>CHANGE"),
        ("size>", "the change is missing after the operator"),
        ("size>five", "'five' is not a change such as -0.005, +5% or 10"),
        ("size>1.2.3", "'1.2.3' is not a number"),
        ("metric<-0.005,,size>5%", "an empty condition"),
        ("", "no condition given"),
    ],
)
def test_bad_conditions_exit_2_with_one_line(conditions, message):
    result = CliRunner().invoke(cli, ["report", str(SAMPLE), str(SAMPLE), "--fail-on", conditions])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_conditions_that_cannot_be_checked_exit_2(sample, tmp_path):
    other = copy.deepcopy(sample)
    for metrics in [other["baseline"]["metrics"], other["final"]["metrics"]]:
        metrics["metric_name"] = "mse"
    other["final"]["metrics"]["latency_ms_b1"] = None
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    runner = CliRunner()
    metric = runner.invoke(cli, ["report", str(SAMPLE), str(path), "--fail-on", "metric<0"])
    assert metric.exit_code == 2 and "different metrics (accuracy vs mse)" in metric.output
    latency = runner.invoke(cli, ["report", str(SAMPLE), str(path), "--fail-on", "latency_b1>5%"])
    assert latency.exit_code == 2 and "the NEW report has no 'latency_b1'" in latency.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("{not json", "not JSON"),
        ('{"ok": true}', "not an mcomp report (no baseline, stages, final, constraints)"),
        ("[1, 2]", "not an mcomp report (a JSON list)"),
    ],
)
def test_unreadable_reports_exit_2(tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(cli, ["report", str(path)])
    assert result.exit_code == 2 and message in result.output


def test_usage_mistakes_exit_2():
    runner = CliRunner()
    assert runner.invoke(cli, ["report", str(SAMPLE), "--fail-on", "size>1"]).exit_code == 2
    assert runner.invoke(cli, ["report", str(SAMPLE)] * 3).exit_code == 2
    assert runner.invoke(cli, ["report"]).exit_code == 2


def test_plot_draws_one_or_two_runs(sample, tmp_path):
    new = tmp_path / "new.json"
    new.write_text(json.dumps(_worse(sample)))
    runner = CliRunner()
    for args, name in (([str(SAMPLE)], "one.png"), ([str(SAMPLE), str(new)], "two.png")):
        result = runner.invoke(cli, ["report", *args, "--plot", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_shows_examples():
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0
    assert 'mcomp report main/report.json pr/report.json --fail-on "metric<-0.005' in result.output


def test_reports_written_before_the_spread_existed_still_render(sample):
    old = copy.deepcopy(sample)
    old.pop("latency")
    old["environment"].pop("cpu_isa_source")
    for entry in [old["baseline"], *old["stages"]]:
        entry["metrics"].pop("latency")
        entry["metrics"].pop("speedup", None)
    text = rendered(old, 120)
    assert "0.129 ×1.3" in text and "latency: median of" not in text
    from mcomp.report.markdown import summary_markdown

    assert "| 0.129 ×1.3 |" in summary_markdown(old)
