def test_command_line_is_shell_quoted_and_names_the_script():
    from fewshot.provenance import command_line

    line = command_line(["/repo/run_episode.py", "train", "--set", "norm_kwargs={alpha: 0.1}"])
    assert line == "python run_episode.py train --set 'norm_kwargs={alpha: 0.1}'"


def test_env_json_records_the_command(tmp_path, monkeypatch):
    from fewshot.training.run_dir import read_json, write_env

    monkeypatch.setattr("fewshot.provenance._recorded", None)  # not run through the CLI: sys.argv is used
    monkeypatch.setattr("sys.argv", ["run_episode.py", "train", "--config", "configs/x.yaml"])
    write_env(tmp_path)
    assert read_json(tmp_path / "env.json")["command"] == "python run_episode.py train --config configs/x.yaml"
