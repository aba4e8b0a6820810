"""Results: flat metrics for logging, JSON round trip, Markdown tables and `model-index` entries."""

import pytest

from modeling_concept_clip.evaluation import (
    BenchmarkResult,
    EvaluationRun,
    MetricValue,
    SugarCrepeConfig,
    benchmark_from_dict,
    comparison_table,
    load_runs,
    save_runs,
    table_rows,
)


def make_run(label, add, swap):
    sugarcrepe = BenchmarkResult(
        name="sugarcrepe", kind="sugarcrepe",
        task={"type": "image-text-matching", "name": "Compositional image-text matching"},
        dataset={"name": "SugarCrepe", "type": "RAIVNLab/sugar-crepe", "split": "test"},
        metrics=[MetricValue("add", add, "accuracy", "Accuracy (Add)"), MetricValue("swap", swap, "accuracy", "Accuracy (Swap)")],
        num_examples={"total": 7512},
    )  # fmt: skip
    return EvaluationRun(
        model={"name_or_path": f"models/{label}", "label": label}, settings={}, benchmarks=[sugarcrepe]
    )


def test_flat_metrics_for_logging():
    run = make_run("c2lip", 0.942, 0.731)
    assert run.flat_metrics(prefix="eval/") == {"eval/sugarcrepe/add": 0.942, "eval/sugarcrepe/swap": 0.731}


def test_json_round_trip(tmp_path):
    runs = [make_run("control", 0.879, 0.697), make_run("c2lip", 0.942, 0.731)]
    path = save_runs(runs, tmp_path / "out" / "results.json")
    assert load_runs(path) == runs


def test_comparison_table_with_difference_column():
    table = comparison_table([make_run("control", 0.879, 0.697), make_run("c2lip", 0.942, 0.731)])
    assert table.splitlines() == [
        "| benchmark | metric | control | c2lip | Δ |",
        "|---|---|---:|---:|---:|",
        "| sugarcrepe | add | 87.9 | 94.2 | +6.3 |",
        "| sugarcrepe | swap | 69.7 | 73.1 | +3.4 |",
    ]


def test_model_index_uses_percent_and_card_fields():
    (entry,) = make_run("c2lip", 0.942, 0.731).model_index("org/c2lip-siglip-b16")
    assert entry["name"] == "org/c2lip-siglip-b16"
    (result,) = entry["results"]
    assert result["task"] == {"type": "image-text-matching", "name": "Compositional image-text matching"}
    assert result["dataset"] == {"name": "SugarCrepe", "type": "RAIVNLab/sugar-crepe", "split": "test"}
    assert result["metrics"][0] == {"type": "accuracy", "value": 94.2, "name": "Accuracy (Add)"}


def test_benchmark_configs_round_trip_through_dicts():
    config = SugarCrepeConfig(name="probes", data_dir="world/probes", subsets=None)
    assert benchmark_from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown benchmark kind 'imagenet'"):
        benchmark_from_dict({"kind": "imagenet"})


def test_read_benchmark_file_yaml_and_errors(tmp_path):
    from modeling_concept_clip.evaluation import EvaluationDataError, read_benchmark_file

    path = tmp_path / "benchmarks.yaml"
    path.write_text("- {kind: sugarcrepe, name: probes, data_dir: world/test, subsets: null}\n"
                    "- {kind: retrieval, annotation_file: world/test/retrieval.json, recall_at: [1, 5]}\n")  # fmt: skip
    probes, retrieval = read_benchmark_file(path)
    assert probes == SugarCrepeConfig(name="probes", data_dir="world/test", subsets=None)
    assert retrieval.recall_at == [1, 5] and retrieval.name == "retrieval"
    path.write_text("- {kind: retrieval}\n")
    with pytest.raises(EvaluationDataError, match=r"benchmarks\.yaml, entry 0: .*needs `annotation_file`"):
        read_benchmark_file(path)


def test_colliding_benchmarks_keep_their_own_model_index_entries_and_non_finite_values_are_left_out():
    relation, attribution = (make_run("x", 0.5, 0.25).benchmarks[0] for _ in range(2))
    relation.name, attribution.name = "vg_relation", "vg_attribution"
    attribution.metrics[1].value = float("nan")
    run = EvaluationRun(model={"name_or_path": "m"}, settings={}, benchmarks=[relation, attribution])
    (entry,) = run.model_index()
    assert [result["dataset"].get("config") for result in entry["results"]] == ["vg_relation", "vg_attribution"]
    assert [len(result["metrics"]) for result in entry["results"]] == [2, 1]  # the NaN swap is left out
    (single,) = make_run("c2lip", 0.942, 0.731).model_index()
    assert "config" not in single["results"][0]["dataset"]


def test_table_rows_align_runs_and_describe_the_dataset():
    other = make_run("control", 0.879, 0.697)
    other.benchmarks[0].metrics.pop()  # a run without the swap metric
    rows = table_rows([other, make_run("c2lip", 0.942, 0.731)])
    assert [(row.benchmark.name, row.metric.key, row.values) for row in rows] == [
        ("sugarcrepe", "add", [0.879, 0.942]),
        ("sugarcrepe", "swap", [None, 0.731]),
    ]
    assert rows[0].benchmark.dataset_label == "SugarCrepe (test, 7,512 examples)"


def test_load_runs_names_the_file_it_cannot_read(tmp_path):
    path = tmp_path / "results.json"
    for content, reason in [
        ('{"schema_version": 2, "runs": []}', "schema version 2 is not supported"),
        ('{"runs": [{"model": {}}]}', "missing field 'settings'"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "Expecting property name"),
    ]:
        path.write_text(content)
        with pytest.raises(ValueError, match=f"{path} is not an evaluation results file: .*{reason}"):
            load_runs(path)


def test_reading_results_does_not_import_torch_and_every_public_name_imports():
    import subprocess
    import sys

    code = "import sys; from modeling_concept_clip.evaluation import load_runs; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    import modeling_concept_clip.evaluation as evaluation

    assert sorted(evaluation.__all__) == sorted(evaluation._MODULE_OF)
    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None
