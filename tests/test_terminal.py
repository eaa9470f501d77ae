"""A well-behaved terminal program: JSON errors under --json, shell completion, the bundled
recipes' list and did-you-mean, one filter for library output, the device note only when
something trains, and portable CPU feature detection."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mcomp.cli.main import cli
from mcomp.library_output import library_output
from mcomp.measure.cpu_features import (
    SOURCES,
    detect_cpu_features,
    parse_cpuinfo,
    parse_numpy_features,
)
from mcomp.recipe.bundled import bundled_names, bundled_recipes
from tests.helpers import mlp_recipe, run_recipe, write_mlp_project


def _json_error(result) -> dict:
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)  # stdout holds the error object and nothing else
    assert document["ok"] is False and document["error"]["exit_code"] == 2
    return document["error"]


@pytest.mark.parametrize(
    ("args", "error_type", "text"),
    [
        (["run", "missing.yaml", "--json"], "RecipeError", "recipe file not found"),
        (["validate", "missing.yaml", "--json"], "RecipeError", "recipe file not found"),
        (["sensitivity", "missing.yaml", "--json"], "RecipeError", "recipe file not found"),
        (["inspect", "missing.onnx", "--json"], "ModelLoadError", "file not found"),
        (["eval", "missing.onnx", "--data", "digits", "--json"], "ModelLoadError", "missing"),
        (["bench", "missing.onnx", "--json"], "ModelLoadError", "missing"),
        (["compare", "a.onnx", "b.onnx", "--json"], "ModelLoadError", "a.onnx"),
        (["report", "missing.json", "--json"], "ReportError", "file not found"),
        # click's own usage errors too
        (["run", "quickstart", "--threads", "0", "--json"], "BadParameter", "--threads"),
        (["eval", "model.onnx", "--json"], "UsageError", "--data is required"),
    ],
)
def test_every_json_command_prints_a_json_error(tmp_path, monkeypatch, args, error_type, text):
    monkeypatch.chdir(tmp_path)
    error = _json_error(CliRunner().invoke(cli, args))
    assert error["type"] == error_type and text in error["message"]


def test_json_error_names_the_recipe_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("version: 1\nmodel: {builtin: digits_cnn}\nstages: 3\n")
    error = _json_error(CliRunner().invoke(cli, ["validate", "r.yaml", "--json"]))
    assert error["file"] == "r.yaml" and error["line"] == 3 and error["key"] == "stages"


def test_init_refusing_to_overwrite_is_a_json_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text("x: 1\n")
    error = _json_error(CliRunner().invoke(cli, ["init", "--json"]))
    assert error["type"] == "OutputError" and "--force" in error["message"]


def test_without_json_stdout_stays_empty_on_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "missing.yaml"])
    assert result.exit_code == 2 and result.stdout == ""


def _complete(words: str) -> list[str]:
    env = {
        **os.environ,
        "_MCOMP_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    result = subprocess.run(
        [sys.executable, "-m", "mcomp"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_run_completes_bundled_recipe_names_and_files():
    assert _complete("mcomp run qu") == [
        "plain,quantize_dynamic",
        "plain,quantize_fallback",
        "plain,quickstart",
        "file,qu",  # the shell adds matching files
    ]
    everything = _complete("mcomp validate ")
    assert [f"plain,{name}" for name in bundled_names()] == everything[:-1]
    assert everything[-1] == "file,"


def test_completion_script_is_what_the_docs_say():
    env = {**os.environ, "_MCOMP_COMPLETE": "bash_source"}
    result = subprocess.run(
        [sys.executable, "-m", "mcomp"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "_mcomp_completion" in result.stdout and "complete " in result.stdout
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert 'eval "$(_MCOMP_COMPLETE=bash_source mcomp)"' in docs


def test_recipes_lists_every_bundled_recipe_in_one_line_each():
    found = bundled_recipes()
    assert {r.name for r in found} >= {"quickstart", "prune_channels", "qat"}
    quickstart = next(r for r in found if r.name == "quickstart")
    assert quickstart.stages == ("prune", "finetune", "quantize", "export")
    assert quickstart.description.startswith("The quickstart:")
    result = CliRunner().invoke(cli, ["recipes"], env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and len(lines) == len(found)
    assert all(len(line) <= 80 for line in lines) and lines[0].startswith(found[0].name)
    listed = json.loads(CliRunner().invoke(cli, ["recipes", "--json"]).stdout)
    assert [r["name"] for r in listed] == bundled_names()


def test_misspelled_bundled_name_gets_a_did_you_mean():
    result = CliRunner().invoke(cli, ["validate", "quickstrat"])
    assert result.exit_code == 2
    assert "no bundled recipe of that name (did you mean 'quickstart'?)" in result.stderr
    assert "`mcomp recipes`" in result.stderr


def test_library_output_is_held_back_or_shown(capsys):
    shown: list[str] = []
    for show in (None, shown.append):
        with library_output(show) as heard:
            print("Collecting tensor data and making histogram ...")
            warnings.warn("torch.onnx.export is deprecated", FutureWarning, stacklevel=1)
            logging.getLogger("onnxruntime.quantization").warning("tensor x not quantized")
            print("partial line without newline", end="")
        assert heard.count == 4
    assert capsys.readouterr().out == ""  # nothing reached stdout
    assert shown[0] == "Collecting tensor data and making histogram ..."
    assert shown[1].startswith("FutureWarning: torch.onnx.export is deprecated")
    assert shown[2] == "onnxruntime.quantization: warning: tensor x not quantized"
    assert shown[3] == "partial line without newline"
    assert not logging.getLogger().handlers or all(
        type(h).__name__ != "_Records" for h in logging.getLogger().handlers
    )


def test_verbose_shows_library_lines_and_plain_runs_count_them():
    from mcomp.cli.library_filter import libraries_filtered, verbose_option

    @click.command()
    @verbose_option
    @click.option("--quiet", is_flag=True)
    def noisy(verbose: bool, quiet: bool) -> None:
        with libraries_filtered(verbose, quiet):
            print("library chatter")
        click.echo("result")

    runner = CliRunner()
    plain = runner.invoke(noisy, [])
    assert plain.stdout == "result\n"
    assert "1 line(s) from libraries held back (--verbose shows them)" in plain.stderr
    verbose = runner.invoke(noisy, ["--verbose"])
    assert verbose.stdout == "result\n" and "mcomp: [library] library chatter" in verbose.stderr
    assert runner.invoke(noisy, ["--quiet"]).stderr == ""


@pytest.mark.slow
def test_device_note_only_when_a_stage_trains(tmp_path):
    write_mlp_project(tmp_path, samples=64)
    note = "runtime.device auto: no GPU, training on the CPU"
    quantize = mlp_recipe(tmp_path, "  - quantize: {mode: dynamic}")
    _, progress = run_recipe(quantize, tmp_path / "q")
    assert not any(note in m for m in progress.messages)
    finetune = mlp_recipe(tmp_path, "  - finetune: {epochs: 1}")
    _, progress = run_recipe(finetune, tmp_path / "f")
    assert sum(note in m for m in progress.messages) == 1


def test_cpu_features_from_cpuinfo_text_and_numpy_table():
    x86 = "processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_int8 avx_vnni\n"
    assert parse_cpuinfo(x86) == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-VNNI", "AMX-INT8"]
    arm = "processor: 0\nFeatures\t: fp asimd asimddp\n"
    assert parse_cpuinfo(arm) == ["ARM dot-product"]
    assert parse_cpuinfo("processor: 0\n") is None  # no flags line: try the next source
    table = {"AVX2": True, "AVX512F": True, "AVX512VNNI": False, "ASIMDDP": False}
    assert parse_numpy_features(table) == ["AVX2", "AVX-512"]
    found = detect_cpu_features()
    assert found.source in SOURCES and found.source != "none"  # Linux CI: /proc/cpuinfo


def test_report_environment_says_how_the_cpu_was_detected():
    from mcomp.report.build import environment

    env = environment(1)
    assert env["cpu_isa_source"] == detect_cpu_features().source
    assert env["cpu_isa"] == list(detect_cpu_features().names)
