"""README.md's headline table is generated from benchmarks/results/*.json: a number that differs fails."""

from benchmarks import plot_results


def test_readme_headline_is_the_result_files():
    text = plot_results.README.read_text(encoding="utf-8")
    block = text.split(plot_results.HEAD_BEGIN, 1)[1].split(plot_results.HEAD_END, 1)[0]
    assert plot_results.HEAD_BEGIN + block + plot_results.HEAD_END == plot_results.render_headline()


def test_a_changed_readme_number_is_stale(tmp_path):
    text = plot_results.README.read_text(encoding="utf-8")
    head, rest = text.split(plot_results.HEAD_BEGIN, 1)
    block, tail = rest.split(plot_results.HEAD_END, 1)
    row = next(line for line in block.splitlines() if line.startswith("| HF |"))
    edited = row.replace(row.split("|")[2].strip(), "1.00", 1)
    copy = tmp_path / "README.md"
    copy.write_text(head + plot_results.HEAD_BEGIN + block.replace(row, edited) + plot_results.HEAD_END + tail)
    assert not plot_results._splice(copy, plot_results.HEAD_BEGIN, plot_results.HEAD_END,
                                    plot_results.render_headline(), check=True)
    assert plot_results._splice(plot_results.README, plot_results.HEAD_BEGIN, plot_results.HEAD_END,
                                plot_results.render_headline(), check=True)
