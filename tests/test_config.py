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


# ---------------------------------------------------------------- input paths that read nothing

PATHS_AT_LINE_3 = """\
input:
  paths:
    - "{path}"
output: {out}
"""


def run_cli(*args: str):
    from winnow.cli import cli

    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("kind", ["empty folder", "folder of unreadable suffixes", "missing file", "glob"])
def test_input_that_reads_nothing_fails_validate_and_run_at_its_line(tmp_path, kind):
    from winnow.pipeline.errors import InputError

    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "folder of unreadable suffixes":
        (folder / "notes.csv").write_text("a,b\n")
    path = {"missing file": folder / "gone.jsonl", "glob": folder / "*.jsonl"}.get(kind, folder)
    config = write(tmp_path, PATHS_AT_LINE_3.format(path=path, out=tmp_path / "out"))
    for command in ("validate", "run"):
        result = run_cli(command, str(config))
        assert result.exit_code != 0, (command, result.output)
        e = result.exception
        assert isinstance(e, ConfigError) and isinstance(e, InputError), (command, repr(e))
        assert (e.path, e.line, e.key) == (str(config), 3, "input.paths[0]"), (command, str(e))
        assert str(e).startswith(f"{config}:3 [input.paths[0]]: ") and str(path) in str(e)
    assert not list((tmp_path / "out").glob("*/train-*.parquet"))   # run stopped before any stage wrote


def test_input_path_from_set_says_so_instead_of_a_line(tmp_path):
    config = write(tmp_path, PATHS_AT_LINE_3.format(path=tmp_path, out=tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("validate", str(config), "--set", f"input.paths=[{empty}]")
    e = result.exception
    assert isinstance(e, ConfigError) and e.line is None and e.key == "input.paths[0]", repr(e)
    assert f"(from --set input.paths=[{empty}])" in str(e) and ":3" not in str(e)


# ---------------------------------------------------------------- unknown keys at any depth

TYPOS = """\
input:
  paths: [a.jsonl]
  text_feild: body
output: o
outptus: {dataset: false}
engine:
  n_worker: 2
outputs:
  datset: false
stages:
  - normalize:
      form: NFC
      strip_line: true
  - minhash_dedup:
      normalize:
        lowercas: false
"""


def test_every_unknown_key_gets_its_line_and_the_nearest_names(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, TYPOS))
    found = [(err.key, err.line, err.reason) for err in (e.value, *e.value.also)]
    expected = [("input.text_feild", 3, "text_field"), ("outptus", 5, "outputs"), ("engine.n_worker", 7, "n_workers"),
                ("outputs.datset", 9, "dataset"), ("stages[0].normalize.strip_line", 13, "strip_lines"),
                ("stages[1].minhash_dedup.normalize.lowercas", 16, "lowercase")]
    assert [(k, line) for k, line, _ in found] == [(k, line) for k, line, _ in expected], found
    for (_, _, reason), (key, _, suggestion) in zip(found, expected, strict=True):
        assert f"did you mean '{suggestion}'" in reason, (key, reason)
    text = str(e.value).splitlines()
    assert text[0].endswith("c.yaml:3 [input.text_feild]: unknown key 'text_feild'; did you mean 'text_field'?")
    assert len(text) == len(expected)   # each on its own line


def test_unknown_key_without_a_near_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "input: {paths: [a]}\noutput: o\nengine:\n  zzz: 1\n"))
    assert (e.value.key, e.value.line) == ("engine.zzz", 4)
    assert "valid keys here:" in e.value.reason and "n_workers" in e.value.reason


def test_unknown_key_set_by_override_names_the_override(tmp_path):
    path = write(tmp_path, GOOD.format(web="x.jsonl", out="o"))
    with pytest.raises(ConfigError) as e:
        load_config(path, ["engine.n_worker=3"])
    assert (e.value.key, e.value.line, e.value.setting) == ("engine.n_worker", None, "engine.n_worker=3")
    assert "did you mean 'n_workers'" in str(e.value)


def test_datatrove_filter_argument_typo_is_reported_at_its_own_line(tmp_path):
    text = GOOD.format(web="x.jsonl", out="o").replace("min_doc_words: 20", "min_doc_word: 20")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert (e.value.key, e.value.line) == ("stages[1].heuristics.gopher_quality.min_doc_word", 8), str(e.value)
    assert "did you mean 'min_doc_words'" in e.value.reason


def test_per_language_argument_typo_is_reported_at_its_own_line(tmp_path):
    text = GOOD.format(web="x.jsonl", out="o").replace(
        "min_doc_words: 20", "min_doc_words: 20\n        per_language:\n          de: {min_doc_word: 40}")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert (e.value.key, e.value.line) == ("stages[1].heuristics.gopher_quality.per_language.de.min_doc_word", 10), \
        str(e.value)
    assert "did you mean 'min_doc_words'" in e.value.reason


def test_storage_options_is_a_mapping_whose_secrets_never_reach_the_resolved_config(tmp_path):
    text = GOOD.format(web="s3://bucket/in/*.jsonl.gz", out="s3://bucket/out") + (
        "storage_options:\n  endpoint_url: http://127.0.0.1:9000\n  secret: hunter2-not-for-files\n"
        "  client_kwargs: {region_name: eu-west-1, aws_session_token: tok-not-for-files}\n  anon: false\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.pipeline.storage_options["endpoint_url"] == "http://127.0.0.1:9000"
    written = cfg.to_yaml()
    assert "hunter2-not-for-files" not in written and "tok-not-for-files" not in written
    assert "endpoint_url: http://127.0.0.1:9000" in written and "region_name: eu-west-1" in written
    assert "anon: false" in written
    with pytest.raises(ConfigError) as e:   # a misspelt top-level key is caught, with the near name
        load_config(write(tmp_path, GOOD.format(web="x.jsonl", out="o") + "storage_option: {}\n"))
    assert e.value.key == "storage_option" and "storage_options" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD.format(web="x.jsonl", out="o") + "storage_options: [a]\n"))
    assert e.value.key == "storage_options"


DATARATER = """\
input:
  paths: ["x.jsonl"]
output: o
stages:
  - datarater:
      keep_top: 0.8
      meta:
        meta_steps: 20
{meta}
"""


@pytest.mark.parametrize("meta, key, line, reason", [
    ("        control_tail: 1.5", "control_tail", 9, "control_tail must be in (0, 1]"),
    ("        prewarm: 1300", "prewarm", 9, "lifetime (600) must exceed prewarm (1300) + unroll (2)"),
    ("        inner_opt: lion", "inner_opt", 9, "inner_opt must be one of"),
    ("        unroll: 0", "unroll", 9, "unroll must be at least 1"),
    ("        meta_step: 10", "meta_step", 9, "did you mean 'meta_steps'"),
    ("        lifetime: lots", "lifetime", 9, "lifetime must be an integer"),
])
def test_a_datarater_meta_value_fails_validate_at_its_own_line(tmp_path, meta, key, line, reason):
    """The DataRater's `meta:` block is checked when the config loads (`winnow validate`), at the line of the
    key at fault; before, a bad value surfaced as a worker traceback after ingest, with no file or line."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, DATARATER.format(meta=meta)))
    assert (e.value.key, e.value.line) == (f"stages[0].datarater.meta.{key}", line), str(e.value)
    assert reason in e.value.reason, e.value.reason


def test_a_good_datarater_meta_block_loads_as_written(tmp_path):
    cfg = load_config(write(tmp_path, DATARATER.format(meta="        inner_betas: [0.9, 0.95]")))
    assert cfg.stages[0].params.meta == {"meta_steps": 20, "inner_betas": [0.9, 0.95]}


def test_a_datarater_meta_block_is_checked_over_the_defaults_of_its_device(tmp_path):
    """prewarm 700 fits a GPU worker's lifetime (1,200) but not the CPU's (600): `auto` may be either."""
    text = DATARATER.format(meta="        prewarm: 700")
    assert load_config(write(tmp_path, text)).stages[0].params.meta["prewarm"] == 700
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text.replace("      keep_top: 0.8", "      keep_top: 0.8\n      device: cpu")))
    assert (e.value.key, e.value.line) == ("stages[0].datarater.meta.prewarm", 10), str(e.value)
