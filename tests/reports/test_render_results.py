"""scripts/render_results.py: README tables regenerated from results/*.csv between markers, nothing else touched."""

from __future__ import annotations

import pytest


@pytest.fixture()
def render(tmp_path, monkeypatch, load_script):
    module = load_script("render_results")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "acc.csv").write_text(
        "# command: python run_episode.py table --format csv\nnorm,shot,mean,p\nbatchnorm,1,98.58667,0.0003243\n"
        "swbn,1,98.27333,\nswbn,5,99.54,0.5\n"
    )
    return module


def test_markers_select_rows_columns_and_decimals(render, tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- results:acc where shot == 1 columns norm,mean,p digits 2 -->\nstale\n<!-- /results:acc -->\nend\n"
    )
    assert render.main([]) == 0
    assert readme.read_text() == (
        "intro\n<!-- results:acc where shot == 1 columns norm,mean,p digits 2 -->\n"
        "| norm | mean | p |\n|---|---|---|\n| batchnorm | 98.59 | 0.00032 |\n| swbn | 98.27 |  |\n"
        "\ncommand: python run_episode.py table --format csv  \n<!-- /results:acc -->\nend\n"
    )
    assert render.main(["--check"]) == 0  # up to date now


def test_default_is_four_significant_digits_and_check_reports_staleness(render, tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:acc columns mean,p -->\n<!-- /results:acc -->\n")
    assert render.main(["--check"]) == 1 and readme.read_text().count("\n") == 2  # --check writes nothing
    render.main([])
    assert "| 98.59 | 0.00032 |" in readme.read_text() and "| 99.54 | 0.5 |" in readme.read_text()


def test_p_values_keep_their_magnitude_and_other_tiny_values_are_not_hidden(render, tmp_path) -> None:
    (tmp_path / "results" / "pairs.csv").write_text(
        "diff,p_t,p_perm\n1.85e-16,7e-19,0.0073\n-0.304,1.0,0.5\n-0.001,0.9,0.9\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- results:pairs digits 2 -->\n<!-- /results:pairs -->\n<!-- results:pairs -->\n<!-- /results:pairs -->\n"
    )
    render.main([])
    lines = readme.read_text().splitlines()
    assert lines[3:6] == ["| 0.00 | 7e-19 | 0.0073 |", "| -0.30 | 1 | 0.5 |", "| 0.00 | 0.9 | 0.9 |"]  # no -0.00
    assert "| 1.85e-16 | 7e-19 | 0.0073 |" in lines


def test_missing_csv_and_unknown_column_are_named(render, tmp_path) -> None:
    (tmp_path / "README.md").write_text("<!-- results:nope -->\n<!-- /results:nope -->\n")
    with pytest.raises(FileNotFoundError, match=r"results/nope\.csv"):
        render.main([])
    (tmp_path / "README.md").write_text("<!-- results:acc columns norm,ratio -->\n<!-- /results:acc -->\n")
    with pytest.raises(KeyError, match=r"no column\(s\) \['ratio'\]"):
        render.main([])


def test_docs_pages_are_rendered_and_checked_too(render, tmp_path, capsys) -> None:
    (tmp_path / "README.md").write_text("no tables\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text("<!-- results:acc columns norm -->\n<!-- /results:acc -->\n")
    assert render.main(["--check"]) == 1 and "out of date: docs/results.md" in capsys.readouterr().err
    assert render.main([]) == 0 and "| batchnorm |" in page.read_text() and render.main(["--check"]) == 0


def test_a_marker_may_name_a_csv_in_a_sub_folder_of_results(render, tmp_path) -> None:
    (tmp_path / "results" / "study" / "grid").mkdir(parents=True)
    (tmp_path / "results" / "study" / "grid" / "study.csv").write_text("# command: sweep report\ncell,mean\nbn,48.0\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:study/grid/study columns cell,mean -->\n<!-- /results:study/grid/study -->\n")
    assert render.main([]) == 0
    assert readme.read_text().splitlines()[1:4] == ["| cell | mean |", "|---|---|", "| bn | 48 |"]


def test_an_included_markdown_file_loses_its_heading_and_its_links_point_into_results(render, tmp_path) -> None:
    (tmp_path / "results" / "study").mkdir()
    (tmp_path / "results" / "study" / "FINDINGS.md").write_text(
        "# Findings\n\n**Answer.** x.\n\n![plot](study_k.png) see [table](study.csv), [web](https://a.b/c)\n"
    )
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text("# Results\n<!-- include:study/FINDINGS.md -->\nold\n<!-- /include:study/FINDINGS.md -->\nrest\n")
    (tmp_path / "README.md").write_text("<!-- include:study/FINDINGS.md -->\n<!-- /include:study/FINDINGS.md -->\n")
    assert render.main(["--check"]) == 1
    assert render.main([]) == 0 and render.main(["--check"]) == 0
    assert page.read_text() == (
        "# Results\n<!-- include:study/FINDINGS.md -->\n**Answer.** x.\n\n![plot](../results/study/study_k.png) see "
        "[table](../results/study/study.csv), [web](https://a.b/c)\n<!-- /include:study/FINDINGS.md -->\nrest\n"
    )
    assert "](results/study/study_k.png)" in (tmp_path / "README.md").read_text()
    (tmp_path / "results" / "study" / "FINDINGS.md").unlink()
    with pytest.raises(FileNotFoundError, match=r"README\.md includes results/study/FINDINGS\.md"):
        render.main([])
