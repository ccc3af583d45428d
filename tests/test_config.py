from __future__ import annotations

import pytest
from click.testing import CliRunner

from winnow.pipeline.config import apply_override, load_config, resolve
from winnow.pipeline.errors import ConfigError

GOOD = """\
input:
  paths: ["{web}"]
output: {out}
stages:
  - normalize: {{}}
  - heuristics:
      gopher_quality:
        min_doc_words: 20
"""


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_good_config_resolves_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.format(web="x.jsonl", out=tmp_path / "o")))
    assert [s.name for s in cfg.stages] == ["normalize", "heuristics"]
    assert cfg.stages[1].params.gopher_quality == {"min_doc_words": 20}
    assert cfg.stages[1].dirname == "02-heuristics"
    assert cfg.pipeline.engine.threads_per_worker == 1
    assert "min_doc_words: 20" in cfg.to_yaml()


def test_unknown_key_names_file_line_and_path(tmp_path):
    text = GOOD.format(web="x.jsonl", out="o").replace("  - normalize: {}", "  - normalize:\n      form: NFC\n      colour: red")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert e.value.key == "stages[0].normalize.colour"
    assert e.value.line == 7
    assert e.value.path.endswith("c.yaml")
    assert "unknown key" in str(e.value)


def test_wrong_type_and_top_level_unknown(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "input: {paths: [a], shard_size_mb: lots}\noutput: o\n"))
    assert e.value.key == "input.shard_size_mb" and e.value.line == 1
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "input: {paths: [a]}\noutput: o\nengin: {}\n"))
    assert e.value.key == "engin" and e.value.line == 3


def test_unknown_stage_suggests_a_name(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'exact_dedup'"):
        resolve({"input": {"paths": ["a"]}, "output": "o", "stages": [{"exact_dedupe": {}}]})


def test_datatrove_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve({"input": {"paths": ["a"]}, "output": "o",
                 "stages": [{"heuristics": {"c4_quality": {"min_num_sentence": 3}}}]})
    assert "min_num_sentence" in str(e.value) and e.value.key.startswith("stages[0].heuristics")


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "input:\n  paths: [a\noutput: o\n"))
    assert e.value.line is not None and "invalid YAML" in str(e.value)


def test_set_overrides(tmp_path):
    path = write(tmp_path, GOOD.format(web="x.jsonl", out="o"))
    cfg = load_config(path, ["engine.n_workers=4", "stages.1.heuristics.c4_quality=null", "output=elsewhere"])
    assert cfg.pipeline.engine.n_workers == 4
    assert cfg.stages[1].params.c4_quality is None
    assert cfg.pipeline.output == "elsewhere"
    data: dict = {"a": {"b": 1}}
    apply_override(data, "a.c.d=[1, 2]")
    assert data == {"a": {"b": 1, "c": {"d": [1, 2]}}}
    with pytest.raises(ConfigError):
        apply_override(data, "no-equals-sign")


def test_validate_cli(tmp_path):
    from winnow.cli import cli

    web = tmp_path / "d.jsonl"
    web.write_text('{"id": "a", "text": "hello"}\n')
    path = write(tmp_path, GOOD.format(web=web, out=tmp_path / "o"))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ingest → normalize → heuristics; 1 input shards" in result.output
    bad = write(tmp_path, "input: {paths: [a]}\noutput: o\nstages: [{nope: {}}]\n")
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code != 0 and "unknown stage 'nope'" in str(result.exception)
